// The flash crowd at sale open: shoppers arrive at a constant RATE per second for
// DURATION (constant-arrival-rate: new arrivals whether or not the server keeps up,
// like real clients), each one browsing, checking out and buying (k6/lib/flashsale.js).
//
//   k6 run k6/flash_crowd.js
//   BASE_URL=http://10.0.0.5:8080 RATE=2000 DURATION=30s P99_MS=100 k6 run k6/flash_crowd.js
//   AT_OPEN=1 k6 run k6/flash_crowd.js      # wait for the next sale and hit its first second
//
// Every knob and threshold: k6/README.md.

import { baseOptions, durationSecs, envInt, envStr, setupSale, shopper, summarize, thresholds } from './lib/flashsale.js';

const RATE = envInt('RATE', 500);
const DURATION = envStr('DURATION', '30s');
const PRE_VUS = envInt('PRE_VUS', Math.max(10, Math.ceil(RATE / 5)));
const MAX_VUS = envInt('MAX_VUS', Math.max(PRE_VUS, 2000));

export const options = baseOptions({
  scenarios: {
    crowd: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: PRE_VUS,
      maxVUs: MAX_VUS,
      exec: 'crowd',
    },
  },
  thresholds: thresholds({
    maxErrorRate: 0.01,
    minCheckRate: 0.999,
    p99Ms: 250,
    // at most 1% of the planned arrivals may be dropped
    maxDropped: Math.floor(RATE * durationSecs(DURATION) * 0.01),
  }),
  // AT_OPEN=1 waits in setup() for the next sale: up to a whole sale period
  setupTimeout: envStr('SETUP_TIMEOUT', envStr('AT_OPEN', '0') === '1' ? '2h' : '60s'),
});

export function setup() {
  return setupSale();
}

export function crowd(data) {
  shopper(data);
}

export function handleSummary(data) {
  return summarize(data, 'crowd');
}
