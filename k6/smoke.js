// Smoke: does a deployment answer as docs/api.md says? First, in setup(), one pass over the
// contract (every route, its error codes, idempotent purchase replay, no
// reservation, the per-user limit); then a few seconds of shoppers at a low constant
// rate (k6/lib/flashsale.js). Fails on any broken check or failed request; no
// latency threshold unless P99_MS is set. CI runs it (tests/k6_smoke.rs).
//
//   k6 run k6/smoke.js
//   BASE_URL=http://127.0.0.1:8080 RATE=20 DURATION=5s USER_LIMIT=10 k6 run k6/smoke.js
//
// USER_LIMIT must be the server's per-user limit (default 10): the contract buys up
// to it and expects the next checkout to answer 409 limit_reached.
// Every knob and threshold: k6/README.md.

import {
  baseOptions,
  checkout,
  envInt,
  envNum,
  envStr,
  getActive,
  getItems,
  getItemsRes,
  purchase,
  replayPurchase,
  setupSale,
  shopper,
  summarize,
  thresholds,
  verdict,
} from './lib/flashsale.js';
import { sleep } from 'k6';

const RATE = envInt('RATE', 20);
const DURATION = envStr('DURATION', '5s');
const USER_LIMIT = envInt('USER_LIMIT', 10);
// In the smoke every purchase is replayed.
const REPLAY = envNum('REPLAY_RATE', 1);

export const options = baseOptions({
  scenarios: {
    smoke: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: envInt('PRE_VUS', Math.max(5, RATE)),
      maxVUs: envInt('MAX_VUS', Math.max(50, 4 * RATE)),
      exec: 'smoke',
    },
  },
  // No timing: every check must pass, at most MAX_ERROR_RATE (default 1%) of
  // requests may fail (503s under a loaded CI machine), no p99 unless P99_MS is set.
  thresholds: thresholds({ maxErrorRate: 0.01, minCheckRate: 1, p99Ms: 0, maxDropped: null }),
});

const HUGE = 9007199254740991; // 2^53 - 1: a valid id that names no sale and no item

function hex32() {
  let s = '';
  for (let i = 0; i < 32; i++) s += Math.floor(Math.random() * 16).toString(16);
  return s;
}

function isError(res, b, status, code) {
  if (res.status !== status) return `answered ${res.status}, expected ${status}${code ? ' ' + code : ''}`;
  if (code && (!b || b.error !== code)) return `error ${b && b.error}, expected ${code}`;
  return null;
}

function expectStatus(res, status) {
  return res.status === status ? null : `answered ${res.status}, expected ${status}`;
}

/** `n` unsold items of the sale (fewer if it has fewer), each as { id, offset }. */
function unsoldItems(saleId, total, n) {
  const out = [];
  for (let offset = 0; offset < total && out.length < n; offset += 1000) {
    const page = getItems(saleId, offset, 1000);
    if (!page) break;
    page.items.forEach((it, i) => {
      if (!it.sold) out.push({ id: it.id, offset: offset + i });
    });
  }
  return out.slice(0, n);
}

/**
 * One pass over the contract, before the shoppers start. Each step is a check named
 * `contract: ...`; its requests say which status they expect, so an expected 404 is
 * not counted in http_req_failed.
 */
function contract(data) {
  const S = data.saleId;
  const u = data.userBase; // contract users: u - 1 .. u - 9 (shoppers use u + 1 ..)

  // reads
  const first = getItems(S, undefined, undefined);
  verdict('contract: items with no paging answer the first 100 (or all)', first ? null : 'no page', null);
  const last = getItems(S, data.itemsTotal - 1, 1000);
  verdict('contract: items at offset total-1 answer the last item', last && last.items.length === 1 ? null : 'no page', null);
  let r = getItemsRes(HUGE, 0, 10, [404]);
  verdict('contract: items of an unknown sale answer 404', isError(r.res, r.b, 404), r.res);
  r = getItemsRes(S, 0, 1001, [400]);
  verdict('contract: items with limit=1001 answer 400 invalid_params', isError(r.res, r.b, 400, 'invalid_params'), r.res);

  // malformed and unknown
  r = checkout(0, HUGE, [400]);
  verdict('contract: checkout user_id=0 answers 400 invalid_params', isError(r.res, r.b, 400, 'invalid_params'), r.res);
  r = checkout(u - 1, HUGE, [404]);
  verdict('contract: checkout of an item not in the sale answers 404 item_not_found', isError(r.res, r.b, 404, 'item_not_found'), r.res);
  r = purchase(`${S}-${u - 1}-${hex32()}`, { expect: [404] });
  verdict('contract: purchase with a code no one was given answers 404 unknown_code', isError(r.res, r.b, 404, 'unknown_code'), r.res);

  const items = unsoldItems(S, data.itemsTotal, USER_LIMIT + 3);
  if (items.length < USER_LIMIT + 3) {
    verdict(`contract: the sale has ${USER_LIMIT + 3} unsold items to test with`, `only ${items.length}`, null);
    return;
  }
  const a = items[0].id;
  const b = items[1].id;

  // one checkout per user per sale; adding twice changes nothing; no reservation
  const c1 = checkout(u - 1, a);
  verdict('contract: checkout of an unsold item answers 200', expectStatus(c1.res, 200), c1.res);
  const again = checkout(u - 1, a);
  verdict(
    'contract: the same item again answers 200 with the same code and items',
    again.b && c1.b && again.b.code === c1.b.code && again.b.items.length === 1 ? null : 'code or items changed',
    again.res,
  );
  const c2 = checkout(u - 2, a);
  verdict(
    'contract: a checked-out item can be checked out by another user (no reservation)',
    c2.b && c1.b && c2.res.status === 200 && c2.b.code !== c1.b.code ? null : 'not a 200 with a code of its own',
    c2.res,
  );
  if (!c1.b || !c2.b) return;

  // the first purchase wins; replays answer the same
  const p1 = purchase(c1.b.code);
  verdict(
    'contract: purchase buys the checkout (200, purchased = [item])',
    p1.res.status === 200 && p1.b && p1.b.purchased.length === 1 && p1.b.purchased[0] === a && p1.b.user_id === u - 1
      ? null
      : 'not 200 purchased [item] for the user',
    p1.res,
  );
  replayPurchase(c1.b.code, p1);
  const p2 = purchase(c2.b.code);
  verdict(
    'contract: purchase of an item sold meanwhile answers 409 nothing_purchased, unavailable = [item]',
    isError(p2.res, p2.b, 409, 'nothing_purchased') ||
      (p2.b.unavailable.length === 1 && p2.b.unavailable[0] === a ? null : `unavailable ${p2.b.unavailable}`),
    p2.res,
  );
  replayPurchase(c2.b.code, p2);
  r = checkout(u - 3, a);
  verdict('contract: checkout of a sold item answers 409 item_sold', isError(r.res, r.b, 409, 'item_sold'), r.res);

  // a purchased code is spent: the next checkout opens a new one
  r = checkout(u - 1, b);
  verdict(
    'contract: after a purchase the next checkout opens a new code',
    r.b && r.res.status === 200 && r.b.code !== c1.b.code && r.b.items.length === 1 ? null : 'same code or old items',
    r.res,
  );

  // the reads show the sale (sold flags come from Redis; allow a moment)
  let shown = false;
  for (let i = 0; i < 40 && !shown; i++) {
    const page = getItems(S, items[0].offset, 1);
    const sale = getActive();
    shown = !!(page && page.items[0] && page.items[0].id === a && page.items[0].sold && sale && sale.items_sold >= 1);
    if (!shown) sleep(0.05);
  }
  verdict('contract: a bought item is listed sold and counted in items_sold', shown ? null : 'not within 2 s', null);

  // the per-user limit: USER_LIMIT items in one checkout, the next one is refused
  const u4 = u - 4;
  let accepted = 0;
  for (const it of items.slice(2, 2 + USER_LIMIT)) {
    if (checkout(u4, it.id).res.status === 200) accepted++;
  }
  r = checkout(u4, items[2 + USER_LIMIT].id);
  verdict(
    `contract: ${USER_LIMIT} items fit in one checkout, the next answers 409 limit_reached (USER_LIMIT=${USER_LIMIT})`,
    accepted === USER_LIMIT ? isError(r.res, r.b, 409, 'limit_reached') : `only ${accepted} accepted`,
    r.res,
  );
}

export function setup() {
  const data = setupSale();
  contract(data);
  return data;
}

export function smoke(data) {
  shopper(data, { replayRate: REPLAY });
}

export function handleSummary(data) {
  return summarize(data, 'smoke');
}
