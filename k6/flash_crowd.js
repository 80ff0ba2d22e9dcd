// k6 flash-crowd scenario for flashsale.
//
//   k6 run k6/flash_crowd.js
//   BASE_URL=http://127.0.0.1:8080 PEAK_RPS=3000 HOLD=20s k6 run k6/flash_crowd.js
//
// The crowd arrives at once when the sale opens (ramping-arrival-rate: new arrivals
// whether or not the server keeps up, like real clients), peaks, then thins out as the
// items run out. Each virtual user is a shopper with a random user id: it checks out a
// random item of the active sale and, when the checkout is accepted, buys it with the
// code. A shopper who reaches the per-user limit leaves and a new one (new id) comes.
//
// Every response must be one the SPEC allows for its route, with a JSON body (and
// `error` code on errors). 409 is an expected outcome (sold / limit / nothing bought),
// so it does not count in http_req_failed.

import http from 'k6/http';
import { check, fail } from 'k6';
import { Counter, Rate } from 'k6/metrics';

const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const PEAK_RPS = parseInt(__ENV.PEAK_RPS || '2000', 10);
const RAMP = __ENV.RAMP || '2s';
const HOLD = __ENV.HOLD || '10s';
const TAIL = __ENV.TAIL || '10s';
const USERS = parseInt(__ENV.USERS || '1000000', 10);
const MAX_VUS = parseInt(__ENV.MAX_VUS || '2000', 10);

http.setResponseCallback(http.expectedStatuses(200, 409));

export const options = {
  scenarios: {
    flash_crowd: {
      executor: 'ramping-arrival-rate',
      startRate: 0,
      timeUnit: '1s',
      preAllocatedVUs: Math.min(MAX_VUS, Math.max(50, Math.ceil(PEAK_RPS / 10))),
      maxVUs: MAX_VUS,
      stages: [
        { target: PEAK_RPS, duration: RAMP }, // the sale opens: everyone at once
        { target: PEAK_RPS, duration: HOLD }, // the crowd
        { target: Math.ceil(PEAK_RPS / 10), duration: TAIL }, // sold out: most leave
        { target: 0, duration: '2s' },
      ],
    },
  },
  thresholds: {
    // 409s are expected outcomes (see setResponseCallback); anything else failing is not.
    http_req_failed: ['rate<0.01'],
    // every response had an allowed status and a well-formed JSON body
    checks: ['rate>0.999'],
    'http_req_duration{name:checkout}': ['p(99)<250'],
    'http_req_duration{name:purchase}': ['p(99)<250'],
    // arrivals k6 could not start because all VUs were busy (server too slow)
    dropped_iterations: ['count<' + Math.max(1, Math.floor(PEAK_RPS / 10))],
  },
};

// outcomes
const checkoutAccepted = new Counter('checkout_accepted'); // 200
const checkoutSold = new Counter('checkout_item_sold'); // 409 item_sold
const checkoutLimit = new Counter('checkout_limit_reached'); // 409 limit_reached
const purchasesWon = new Counter('purchases_won'); // 200 purchases
const itemsWon = new Counter('items_won'); // items bought (sum of `purchased`)
const purchaseLost = new Counter('purchases_lost'); // 409 nothing_purchased
const overloaded = new Counter('responses_503'); // shed load / no sale / backend down
const winRate = new Rate('checkout_win_rate'); // checkouts that ended in a purchase

const CHECKOUT_ERRORS = {
  404: ['item_not_found'],
  409: ['item_sold', 'limit_reached'],
  503: null, // no_active_sale, or overload / Redis down: any code
};
const PURCHASE_ERRORS = {
  404: ['unknown_code'],
  409: ['nothing_purchased'],
  410: ['sale_ended'],
  503: null,
};

export function setup() {
  const res = http.get(`${BASE_URL}/sales/active`, { tags: { name: 'sales_active' } });
  if (res.status !== 200) {
    fail(`GET /sales/active answered ${res.status}: is the server up with an active sale? ${res.body}`);
  }
  const sale = res.json();
  if (!(sale.sale_id > 0) || !(sale.items_total > 0)) {
    fail(`unexpected /sales/active body: ${res.body}`);
  }
  console.log(`sale ${sale.sale_id}: ${sale.items_total} items, ${sale.items_sold} sold`);
  return { saleId: sale.sale_id, itemsTotal: sale.items_total };
}

function randInt(lo, hi) {
  return lo + Math.floor(Math.random() * (hi - lo + 1));
}

function body(res) {
  try {
    return res.json();
  } catch (e) {
    return null;
  }
}

// Is `res` one of the answers the SPEC allows, with a proper JSON body?
function allowed(res, b, errors, okFields) {
  if (b === null || typeof b !== 'object') return false;
  const ctype = res.headers['Content-Type'] || '';
  if (!ctype.startsWith('application/json')) return false;
  if (res.status === 200) return okFields.every((f) => f in b);
  if (!(res.status in errors)) return false;
  if (typeof b.error !== 'string' || typeof b.message !== 'string') return false;
  const codes = errors[res.status];
  return codes === null || codes.includes(b.error);
}

// VU-scoped: the shopper this VU currently plays.
let userId = randInt(1, USERS);

export default function (sale) {
  const item = sale.saleId * 1000000 + randInt(1, sale.itemsTotal);
  const res = http.post(`${BASE_URL}/checkout?user_id=${userId}&id=${item}`, null, {
    tags: { name: 'checkout' },
  });
  const b = body(res);
  check(res, {
    'checkout: allowed status and JSON body': (r) =>
      allowed(r, b, CHECKOUT_ERRORS, ['code', 'sale_id', 'item_id', 'items']),
  });

  if (res.status === 503) overloaded.add(1);
  if (res.status === 409 && b) {
    if (b.error === 'item_sold') checkoutSold.add(1);
    if (b.error === 'limit_reached') {
      checkoutLimit.add(1);
      userId = randInt(1, USERS); // this shopper is done; a new one takes the VU
    }
  }
  if (res.status !== 200 || !b || !b.code) {
    return;
  }
  checkoutAccepted.add(1);

  const pres = http.post(`${BASE_URL}/purchase?code=${encodeURIComponent(b.code)}`, null, {
    tags: { name: 'purchase' },
  });
  const pb = body(pres);
  check(pres, {
    'purchase: allowed status and JSON body': (r) =>
      allowed(r, pb, PURCHASE_ERRORS, ['sale_id', 'user_id', 'purchased', 'unavailable']),
    'purchase: 200 bought at least one item': (r) =>
      r.status !== 200 || (pb && Array.isArray(pb.purchased) && pb.purchased.length > 0),
  });
  if (pres.status === 200 && pb && Array.isArray(pb.purchased)) {
    purchasesWon.add(1);
    itemsWon.add(pb.purchased.length);
    winRate.add(true);
  } else {
    if (pres.status === 409) purchaseLost.add(1);
    if (pres.status === 503) overloaded.add(1);
    winRate.add(false);
  }
}
