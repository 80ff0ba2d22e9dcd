// Shared by k6/flash_crowd.js, k6/ramp.js and k6/smoke.js: configuration from the
// environment, the shopper's flow, the response checks (one per route, each
// following docs/api.md), the custom metrics, the thresholds and the summary.
//
// Nothing here fetches from the network: the scripts run offline (CI included).

import http from 'k6/http';
import exec from 'k6/execution';
import { check, fail, sleep } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';

// ---------------------------------------------------------------------------
// configuration
// ---------------------------------------------------------------------------

export function envStr(name, dflt) {
  const v = __ENV[name];
  return v === undefined || v === '' ? dflt : v;
}

export function envNum(name, dflt) {
  const v = envStr(name, undefined);
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`${name}=${v} is not a number`);
  return n;
}

export function envInt(name, dflt) {
  const n = envNum(name, dflt);
  if (!Number.isInteger(n)) throw new Error(`${name}=${n} is not an integer`);
  return n;
}

/** Seconds in a k6 duration such as `30s`, `2m`, `1m30s`, `500ms` or a bare number. */
export function durationSecs(d) {
  if (/^\d+(\.\d+)?$/.test(d)) return Number(d);
  const re = /(\d+(?:\.\d+)?)(ms|h|m|s)/g;
  let total = 0;
  let seen = '';
  let m;
  while ((m = re.exec(d)) !== null) {
    const unit = { ms: 0.001, s: 1, m: 60, h: 3600 }[m[2]];
    total += Number(m[1]) * unit;
    seen += m[0];
  }
  if (seen !== d) throw new Error(`not a duration: ${d}`);
  return total;
}

export const BASE_URL = envStr('BASE_URL', 'http://127.0.0.1:8080').replace(/\/+$/, '');
/** Items a shopper puts in the checkout before buying. */
export const CART_SIZE = envInt('CART_SIZE', 3);
/** Items per page of GET /sales/{id}/items a shopper browses. */
export const PAGE_SIZE = envInt('PAGE_SIZE', 50);
/** Share of purchases sent a second time with the same code (idempotency check). */
export const REPLAY_RATE = envNum('REPLAY_RATE', 0.1);
/** 0: every shopper is a new user. N: user ids drawn from 1..N (returning users). */
export const USERS = envInt('USERS', 0);
/** Per-request timeout. */
export const TIMEOUT = envStr('TIMEOUT', '10s');
/** Where handleSummary writes its JSON; empty string: no file. */
export const SUMMARY_JSON = __ENV.SUMMARY_JSON === undefined ? 'k6-summary.json' : __ENV.SUMMARY_JSON;

if (CART_SIZE < 1) throw new Error('CART_SIZE must be at least 1');
if (PAGE_SIZE < 1 || PAGE_SIZE > 1000) throw new Error('PAGE_SIZE must be in 1..1000');

// 409 is an outcome the API expects (sold, limit, nothing bought), not a failure:
// http_req_failed counts everything else that is not a 200 (404, 410, 503, 5xx,
// transport errors). Requests that expect another status say so themselves.
http.setResponseCallback(http.expectedStatuses(200, 409));

// ---------------------------------------------------------------------------
// metrics
// ---------------------------------------------------------------------------

export const ROUTES = ['active', 'items', 'checkout', 'purchase'];

const latency = {};
for (const r of ROUTES) latency[r] = new Trend(`latency_${r}`, true);

const m = {
  checkoutAccepted: new Counter('checkout_accepted'), // 200
  checkoutSold: new Counter('checkout_item_sold'), // 409 item_sold
  checkoutLimit: new Counter('checkout_limit_reached'), // 409 limit_reached
  checkoutNotFound: new Counter('checkout_item_not_found'), // 404 item_not_found
  purchasesWon: new Counter('purchases_won'), // 200 (first attempt of a code)
  itemsWon: new Counter('items_won'), // sum of `purchased` over those
  purchasesLost: new Counter('purchases_lost'), // 409 nothing_purchased (first attempt)
  replays: new Counter('purchase_replays'), // second attempts with the same code
  shed: new Counter('responses_503'), // any 503 (no sale, overloaded, Redis down)
  shopperWon: new Rate('shopper_won'), // shoppers who left with at least one item
};

// ---------------------------------------------------------------------------
// checks
// ---------------------------------------------------------------------------

// Failing checks print why (the first few per VU), since a check itself is a boolean.
let complaints = 0;
function complain(name, why, res) {
  if (complaints++ < 5) {
    const body = res && typeof res.body === 'string' ? res.body.slice(0, 300) : '';
    const req = res && res.request ? ` [${res.request.method} ${res.request.url} -> ${res.status} ${body}]` : '';
    console.warn(`check failed: ${name}: ${why}${req}`);
  }
}

/** Records check `name`: passes when `why` is null, otherwise prints the reason. */
export function verdict(name, why, res) {
  if (why !== null) complain(name, why, res);
  return check(null, { [name]: () => why === null });
}

function jsonBody(res) {
  try {
    return res.json();
  } catch (_) {
    return undefined;
  }
}

const isInt = (v) => Number.isInteger(v);
const isPosInt = (v) => Number.isInteger(v) && v > 0;
const isIntArray = (v) => Array.isArray(v) && v.every(isInt);
const sameSet = (a, b) => a.length === b.length && a.every((x) => b.includes(x));

/**
 * What every answer shares: a JSON object body with `Content-Type: application/json`;
 * on an error, `error` (one of `allowed[status]`) and `message`; on a 503, `Retry-After`.
 * Returns null when all holds, else the first thing that does not.
 */
function envelope(res, b, allowed) {
  if (res.status === 0) return `transport error: ${res.error}`;
  const ctype = res.headers['Content-Type'] || '';
  if (!ctype.toLowerCase().startsWith('application/json')) return `Content-Type is ${JSON.stringify(ctype)}`;
  if (b === undefined || b === null || typeof b !== 'object' || Array.isArray(b)) return 'body is not a JSON object';
  if (res.status === 200) return null;
  if (!(res.status in allowed)) return `status ${res.status} is not one this route answers`;
  if (typeof b.error !== 'string' || b.error === '') return 'error body lacks a string `error`';
  if (typeof b.message !== 'string' || b.message === '') return 'error body lacks a string `message`';
  const codes = allowed[res.status];
  if (codes !== null && !codes.includes(b.error)) return `error ${b.error} is not one of ${codes} for ${res.status}`;
  if (res.status === 503 && !res.headers['Retry-After']) return '503 without Retry-After';
  return null;
}

const SHED = ['overloaded', 'redis_unavailable'];
const ERRORS = {
  active: { 503: ['no_active_sale', ...SHED] },
  items: { 400: ['invalid_params'], 404: null, 503: SHED },
  checkout: {
    400: ['invalid_params'],
    404: ['item_not_found'],
    409: ['item_sold', 'limit_reached'],
    503: ['no_active_sale', ...SHED],
  },
  purchase: {
    400: ['invalid_params'],
    404: ['unknown_code'],
    409: ['nothing_purchased'],
    410: ['sale_ended'],
    503: SHED,
  },
};

function activeShape(b) {
  if (!isPosInt(b.sale_id)) return 'sale_id is not a positive integer';
  if (b.starts_at === undefined || b.ends_at === undefined) return 'starts_at / ends_at missing';
  const s = Date.parse(b.starts_at);
  const e = Date.parse(b.ends_at);
  if (typeof b.starts_at === 'string' && typeof b.ends_at === 'string' && !(s < e)) return 'starts_at is not before ends_at';
  if (!isPosInt(b.items_total)) return 'items_total is not a positive integer';
  if (!isInt(b.items_sold) || b.items_sold < 0 || b.items_sold > b.items_total) return 'items_sold is not in 0..items_total';
  return null;
}

function itemsShape(b, saleId, offset, limit) {
  if (b.sale_id !== saleId) return `sale_id ${b.sale_id}, asked for ${saleId}`;
  if (!isInt(b.total) || b.total < 0) return 'total is not an integer';
  if (!Array.isArray(b.items)) return 'items is not an array';
  const want = Math.max(0, Math.min(limit, b.total - offset));
  if (b.items.length !== want) return `${b.items.length} items, expected ${want} (total ${b.total}, offset ${offset}, limit ${limit})`;
  let prev = -Infinity;
  for (const it of b.items) {
    if (it === null || typeof it !== 'object') return 'an item is not an object';
    if (!isPosInt(it.id)) return `item id ${it.id} is not a positive integer`;
    if (!(it.id > prev)) return `items are not ordered by id (${prev} then ${it.id})`;
    prev = it.id;
    if (typeof it.name !== 'string' || it.name === '') return `item ${it.id}: no name`;
    if (typeof it.image_url !== 'string' || it.image_url === '') return `item ${it.id}: no image_url`;
    if (typeof it.sold !== 'boolean') return `item ${it.id}: sold is not a boolean`;
  }
  return null;
}

function purchaseShape(b) {
  if (!isPosInt(b.sale_id)) return 'sale_id is not a positive integer';
  if (!isPosInt(b.user_id)) return 'user_id is not a positive integer';
  if (!isIntArray(b.purchased)) return 'purchased is not an array of ids';
  if (!isIntArray(b.unavailable)) return 'unavailable is not an array of ids';
  return null;
}

// ---------------------------------------------------------------------------
// the routes: one request, its checks and its metrics
// ---------------------------------------------------------------------------

function params(route, expect) {
  const p = { tags: { name: route }, timeout: TIMEOUT };
  if (expect !== undefined) p.responseCallback = http.expectedStatuses(...expect);
  return p;
}

function record(route, res) {
  latency[route].add(res.timings.duration);
  if (res.status === 503) m.shed.add(1);
}

/** GET /sales/active. Returns the sale on 200, else null. */
export function getActive(expect) {
  const res = http.get(`${BASE_URL}/sales/active`, params('active', expect));
  record('active', res);
  const b = jsonBody(res);
  const why = envelope(res, b, ERRORS.active) || (res.status === 200 ? activeShape(b) : null);
  verdict('active: JSON as documented (200 sale fields, or 503 no_active_sale)', why, res);
  return res.status === 200 && why === null ? b : null;
}

/**
 * GET /sales/{id}/items?offset=&limit= (an undefined offset or limit is left out: the
 * server's defaults, 0 and 100). Returns the body on 200, else null.
 */
export function getItems(saleId, offset, limit, expect) {
  const { res, b } = getItemsRes(saleId, offset, limit, expect);
  return res.status === 200 ? b : null;
}

/** getItems, returning { res, b } (b undefined when the answer broke a check). */
export function getItemsRes(saleId, offset, limit, expect) {
  const q = [];
  if (offset !== undefined) q.push(`offset=${offset}`);
  if (limit !== undefined) q.push(`limit=${limit}`);
  const url = `${BASE_URL}/sales/${saleId}/items${q.length ? '?' + q.join('&') : ''}`;
  const res = http.get(url, params('items', expect));
  record('items', res);
  const b = jsonBody(res);
  const shape = () => itemsShape(b, saleId, offset === undefined ? 0 : offset, limit === undefined ? 100 : limit);
  const why = envelope(res, b, ERRORS.items) || (res.status === 200 ? shape() : null);
  verdict('items: JSON as documented (page ordered by id, each {id,name,image_url,sold})', why, res);
  return { res, b: why === null ? b : undefined };
}

/** POST /checkout. Returns { res, b } with b the parsed body (undefined when not JSON). */
export function checkout(userId, itemId, expect) {
  const res = http.post(`${BASE_URL}/checkout?user_id=${userId}&id=${itemId}`, null, params('checkout', expect));
  record('checkout', res);
  const b = jsonBody(res);
  let why = envelope(res, b, ERRORS.checkout);
  if (why === null && res.status === 200) {
    if (typeof b.code !== 'string' || b.code === '') why = 'code is not a non-empty string';
    else if (!isPosInt(b.sale_id)) why = 'sale_id is not a positive integer';
    else if (b.item_id !== itemId) why = `item_id ${b.item_id}, asked for ${itemId}`;
    else if (!isIntArray(b.items) || !b.items.includes(itemId)) why = 'items does not list the item';
  }
  verdict('checkout: JSON as documented (200 code/sale_id/item_id/items, 404/409/503 codes)', why, res);
  if (why === null) {
    if (res.status === 200) m.checkoutAccepted.add(1);
    if (res.status === 404) m.checkoutNotFound.add(1);
    if (res.status === 409 && b.error === 'item_sold') m.checkoutSold.add(1);
    if (res.status === 409 && b.error === 'limit_reached') m.checkoutLimit.add(1);
  }
  return { res, b: why === null ? b : undefined };
}

/**
 * POST /purchase. `replay` marks a second attempt with the same code (not counted
 * as a new outcome). Returns { res, b }.
 */
export function purchase(code, { expect, replay } = {}) {
  const res = http.post(`${BASE_URL}/purchase?code=${encodeURIComponent(code)}`, null, params('purchase', expect));
  record('purchase', res);
  const b = jsonBody(res);
  let why = envelope(res, b, ERRORS.purchase);
  if (why === null && (res.status === 200 || res.status === 409)) {
    why = purchaseShape(b);
    if (why === null && res.status === 200 && b.purchased.length === 0) why = '200 with nothing purchased';
    if (why === null && res.status === 409 && b.purchased.length !== 0) why = '409 nothing_purchased lists purchased items';
  }
  verdict('purchase: JSON as documented (200 purchased non-empty, 409 nothing_purchased same fields, 404/410)', why, res);
  if (why === null && !replay) {
    if (res.status === 200) {
      m.purchasesWon.add(1);
      m.itemsWon.add(b.purchased.length);
    }
    if (res.status === 409) m.purchasesLost.add(1);
  }
  if (replay) m.replays.add(1);
  return { res, b: why === null ? b : undefined };
}

/** The same code a second time: same status, same lists, nothing more bought. */
export function replayPurchase(code, first) {
  const { res, b } = purchase(code, { replay: true });
  let why = null;
  if (res.status !== first.res.status) why = `status ${res.status}, first answer ${first.res.status}`;
  else if (b && first.b && first.b.purchased) {
    if (b.sale_id !== first.b.sale_id || b.user_id !== first.b.user_id) why = 'sale_id / user_id differ';
    else if (!sameSet(b.purchased, first.b.purchased)) why = `purchased ${b.purchased}, first ${first.b.purchased}`;
    else if (!sameSet(b.unavailable, first.b.unavailable)) why = `unavailable ${b.unavailable}, first ${first.b.unavailable}`;
  }
  verdict('purchase: a replay (same code) answers the same status and lists', why, res);
}

// ---------------------------------------------------------------------------
// setup and the shopper
// ---------------------------------------------------------------------------

/**
 * Reads the active sale (GET /sales/active); fails the run when there is none.
 * With AT_OPEN=1, waits for the current sale to end and returns the next one, so
 * the crowd arrives in the sale's first second. Returns the data every VU gets.
 */
export function setupSale() {
  let sale = getActive();
  if (!sale) fail(`GET ${BASE_URL}/sales/active gave no sale: is the server up with an active sale?`);
  if (envStr('AT_OPEN', '0') === '1') {
    const ends = Date.parse(sale.ends_at);
    if (!Number.isFinite(ends)) fail(`AT_OPEN=1 needs an RFC 3339 ends_at, got ${sale.ends_at}`);
    const wait = Math.max(0, ends - Date.now());
    console.log(`sale ${sale.sale_id} ends in ${(wait / 1000).toFixed(1)} s; waiting for the next one to open`);
    sleep(wait / 1000);
    const old = sale.sale_id;
    for (let i = 0; i < 100; i++) {
      sale = getActive([200, 503]);
      if (sale && sale.sale_id !== old) break;
      sleep(0.05);
    }
    if (!sale || sale.sale_id === old) fail(`no new sale opened after sale ${old} ended`);
  }
  console.log(`sale ${sale.sale_id}: ${sale.items_total} items, ${sale.items_sold} sold; ${BASE_URL}`);
  // Shoppers' user ids: userBase + the iteration's number, unique within the run.
  // A random base keeps two runs against one sale apart.
  const userBase = 1e9 + Math.floor(Math.random() * 1e6) * 1e6;
  return { saleId: sale.sale_id, itemsTotal: sale.items_total, userBase };
}

function shuffle(a) {
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

/**
 * One shopper, start to finish: reads the active sale, browses a random page of its
 * items, checks out CART_SIZE of them (unsold ones first; when the page has too few,
 * the rest are sold ones, which must answer 409 item_sold), buys with the code when a
 * checkout was accepted, and on a sample (`replayRate`, default REPLAY_RATE) sends
 * the purchase again.
 */
export function shopper(data, { replayRate = REPLAY_RATE } = {}) {
  const unique = USERS === 0;
  const userId = unique ? data.userBase + exec.scenario.iterationInTest + 1 : 1 + Math.floor(Math.random() * USERS);

  const sale = getActive();
  if (!sale) return;
  const pages = Math.max(1, Math.ceil(sale.items_total / PAGE_SIZE));
  const offset = Math.floor(Math.random() * pages) * PAGE_SIZE;
  const page = getItems(sale.sale_id, offset, PAGE_SIZE);
  if (!page || page.items.length === 0) return;

  const unsold = shuffle(page.items.filter((it) => !it.sold));
  const sold = shuffle(page.items.filter((it) => it.sold));
  const picks = unsold.concat(sold).slice(0, CART_SIZE);

  let code = null;
  const cart = [];
  for (const it of picks) {
    const { res, b } = checkout(userId, it.id);
    if (it.sold) {
      // (or 404 item_not_found: the sale ended since the page was read)
      const err = b && b.error;
      const ok = (res.status === 409 && err === 'item_sold') || (res.status === 404 && err === 'item_not_found');
      const why = ok ? null : `answered ${res.status} ${err}`;
      verdict('checkout: an item the page lists sold answers 409 item_sold', why, res);
    }
    if (!b) continue;
    if (res.status === 200) {
      cart.push(it.id);
      if (unique) {
        // One shopper, one open checkout: the same code, listing exactly its items.
        let why = null;
        if (code !== null && b.code !== code) why = `code changed from ${code} to ${b.code}`;
        else if (!sameSet(b.items, cart)) why = `items ${b.items}, checked out ${cart}`;
        verdict("checkout: a shopper's checkouts share one code and list its items", why, res);
      }
      code = b.code;
    } else if (res.status === 409 && b.error === 'limit_reached') {
      break;
    } else if (res.status === 503) {
      break;
    }
  }
  if (code === null) {
    m.shopperWon.add(false);
    return;
  }

  const first = purchase(code);
  m.shopperWon.add(first.res.status === 200);
  if (first.b && unique && (first.res.status === 200 || first.res.status === 409)) {
    // Every item of the checkout is either bought or reported unavailable.
    const both = first.b.purchased.concat(first.b.unavailable);
    let why = null;
    if (first.b.user_id !== userId) why = `user_id ${first.b.user_id}, shopper ${userId}`;
    else if (!sameSet(both, cart)) why = `purchased ${first.b.purchased} + unavailable ${first.b.unavailable}, checked out ${cart}`;
    verdict('purchase: purchased + unavailable = the checkout', why, first.res);
  }
  const final = first.res.status === 200 || first.res.status === 409;
  if (first.b && final && Math.random() < replayRate) replayPurchase(code, first);
}

// ---------------------------------------------------------------------------
// options, thresholds
// ---------------------------------------------------------------------------

/**
 * Thresholds that fail the run (k6 exits 99):
 *   http_req_failed rate <= MAX_ERROR_RATE     (not 200 and not 409: 404, 410, 503, 5xx, timeouts)
 *   checks rate >= MIN_CHECK_RATE              (responses that break the contract)
 *   latency_<route> p(99) < P99_MS             (each route; P99_MS=0 turns them off)
 *   dropped_iterations <= MAX_DROPPED          (arrivals k6 could not start: VUs all busy)
 * `defaults` gives each knob's default for the scenario; null leaves it out.
 */
export function thresholds(defaults) {
  const t = {};
  const maxErr = envNum('MAX_ERROR_RATE', defaults.maxErrorRate);
  const minChecks = envNum('MIN_CHECK_RATE', defaults.minCheckRate);
  const p99 = envNum('P99_MS', defaults.p99Ms);
  const dropped = envNum('MAX_DROPPED', defaults.maxDropped);
  t.http_req_failed = [`rate<=${maxErr}`];
  t.checks = [`rate>=${minChecks}`];
  if (p99 > 0) for (const r of ROUTES) t[`latency_${r}`] = [`p(99)<${p99}`];
  if (dropped !== null && dropped !== undefined) t.dropped_iterations = [`count<=${dropped}`];
  return t;
}

/** Options every script shares. */
export function baseOptions(extra) {
  return Object.assign(
    {
      summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'max'],
      // a smaller default than k6's 60 s: a server that does not answer fails fast
      setupTimeout: envStr('SETUP_TIMEOUT', '60s'),
    },
    extra,
  );
}

// ---------------------------------------------------------------------------
// summary
// ---------------------------------------------------------------------------

function metric(data, name) {
  return (data.metrics[name] && data.metrics[name].values) || {};
}

function checksOf(group, out) {
  for (const c of group.checks || []) out.push(c);
  for (const g of group.groups || []) checksOf(g, out);
  return out;
}

function fmt(n, digits = 0) {
  if (n === undefined || n === null || !Number.isFinite(n)) return '-';
  return n.toFixed(digits);
}

/**
 * The summary: `flashsale` (a compact digest, below) followed by k6's own summary
 * data (metrics, root_group with every check, options, state), as JSON to
 * SUMMARY_JSON, and a short text report on stdout.
 */
export function summarize(data, scenario) {
  const reqs = metric(data, 'http_reqs');
  const failed = metric(data, 'http_req_failed');
  const checks = checksOf(data.root_group || {}, []);
  const passes = checks.reduce((s, c) => s + c.passes, 0);
  const fails = checks.reduce((s, c) => s + c.fails, 0);
  const thresholdResults = [];
  for (const [name, mtr] of Object.entries(data.metrics)) {
    for (const [expr, r] of Object.entries(mtr.thresholds || {})) {
      thresholdResults.push({ metric: name, threshold: expr, ok: r.ok });
    }
  }
  thresholdResults.sort((a, b) => (a.metric < b.metric ? -1 : a.metric > b.metric ? 1 : 0));
  const count = (name) => metric(data, name).count || 0;
  const digest = {
    scenario,
    base_url: BASE_URL,
    sale_id: data.setup_data ? data.setup_data.saleId : null,
    duration_s: data.state ? data.state.testRunDurationMs / 1000 : null,
    requests: reqs.count || 0,
    requests_per_s: reqs.rate || 0,
    failed_rate: failed.rate || 0,
    iterations: count('iterations'),
    dropped_iterations: count('dropped_iterations'),
    checks: {
      passes,
      fails,
      failed: checks.filter((c) => c.fails > 0).map((c) => ({ name: c.name, fails: c.fails, passes: c.passes })),
    },
    outcomes: {
      checkout_accepted: count('checkout_accepted'),
      checkout_item_sold: count('checkout_item_sold'),
      checkout_limit_reached: count('checkout_limit_reached'),
      checkout_item_not_found: count('checkout_item_not_found'),
      purchases_won: count('purchases_won'),
      items_won: count('items_won'),
      purchases_lost: count('purchases_lost'),
      purchase_replays: count('purchase_replays'),
      responses_503: count('responses_503'),
    },
    latency_ms: Object.fromEntries(ROUTES.map((r) => [r, metric(data, `latency_${r}`)])),
    thresholds: thresholdResults,
    thresholds_ok: thresholdResults.every((t) => t.ok),
  };

  const o = digest.outcomes;
  const lines = [];
  lines.push('');
  lines.push(`flashsale k6 ${scenario}: ${BASE_URL}, sale ${digest.sale_id}, ${fmt(digest.duration_s, 1)} s`);
  lines.push(
    `  requests   ${digest.requests} (${fmt(digest.requests_per_s, 1)}/s), failed ${fmt(100 * digest.failed_rate, 2)}%` +
      ` (not 200/409), 503s ${o.responses_503}`,
  );
  lines.push(`  shoppers   ${digest.iterations} iterations, ${digest.dropped_iterations} dropped`);
  lines.push(`  checks     ${passes} passed, ${fails} failed`);
  for (const c of digest.checks.failed) lines.push(`    FAILED ${c.fails}x: ${c.name}`);
  lines.push(
    `  checkout   ${o.checkout_accepted} accepted, ${o.checkout_item_sold} item_sold, ` +
      `${o.checkout_limit_reached} limit_reached, ${o.checkout_item_not_found} item_not_found`,
  );
  lines.push(
    `  purchase   ${o.purchases_won} won (${o.items_won} items), ${o.purchases_lost} nothing_purchased, ` +
      `${o.purchase_replays} replays`,
  );
  lines.push('  latency ms     avg     p50     p90     p99     max');
  for (const r of ROUTES) {
    // a route with no request has no latency (k6 reports zeros for a thresholded one)
    const v = (data.metrics[`latency_${r}`] && metric(data, `latency_${r}`).max > 0 && digest.latency_ms[r]) || {};
    const cell = (x) => fmt(x, 2).padStart(8);
    lines.push(`    ${r.padEnd(9)}${cell(v.avg)}${cell(v.med)}${cell(v['p(90)'])}${cell(v['p(99)'])}${cell(v.max)}`);
  }
  lines.push('  thresholds');
  for (const t of thresholdResults) lines.push(`    ${t.ok ? 'ok    ' : 'FAILED'} ${t.metric} ${t.threshold}`);
  if (SUMMARY_JSON) lines.push(`  summary JSON: ${SUMMARY_JSON}`);
  lines.push('');

  const out = { stdout: lines.join('\n') + '\n' };
  if (SUMMARY_JSON) out[SUMMARY_JSON] = JSON.stringify(Object.assign({ flashsale: digest }, data), null, 2);
  return out;
}
