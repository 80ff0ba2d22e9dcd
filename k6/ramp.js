// A ramp: arrivals climb from 0 to PEAK_RPS shoppers per second over RAMP, hold the
// peak for HOLD, fall to a tenth of it over TAIL (the sale sells out, most leave),
// then to zero (ramping-arrival-rate). Each arrival is one shopper browsing,
// checking out and buying (k6/lib/flashsale.js).
//
//   k6 run k6/ramp.js
//   BASE_URL=http://127.0.0.1:8080 PEAK_RPS=3000 RAMP=2s HOLD=20s TAIL=10s k6 run k6/ramp.js
//
// Every knob and threshold: k6/README.md.

import { baseOptions, durationSecs, envInt, envStr, setupSale, shopper, summarize, thresholds } from './lib/flashsale.js';

const PEAK_RPS = envInt('PEAK_RPS', 500);
const RAMP = envStr('RAMP', '2s');
const HOLD = envStr('HOLD', '10s');
const TAIL = envStr('TAIL', '10s');
const PRE_VUS = envInt('PRE_VUS', Math.max(10, Math.ceil(PEAK_RPS / 5)));
const MAX_VUS = envInt('MAX_VUS', Math.max(PRE_VUS, 2000));

// Arrivals the stages plan (trapezoids), for the dropped-iterations bound.
const planned =
  (PEAK_RPS / 2) * durationSecs(RAMP) +
  PEAK_RPS * durationSecs(HOLD) +
  ((PEAK_RPS + PEAK_RPS / 10) / 2) * durationSecs(TAIL) +
  PEAK_RPS / 20 * 2;

export const options = baseOptions({
  scenarios: {
    ramp: {
      executor: 'ramping-arrival-rate',
      startRate: 0,
      timeUnit: '1s',
      preAllocatedVUs: PRE_VUS,
      maxVUs: MAX_VUS,
      stages: [
        { target: PEAK_RPS, duration: RAMP }, // the sale opens: everyone at once
        { target: PEAK_RPS, duration: HOLD }, // the crowd
        { target: Math.ceil(PEAK_RPS / 10), duration: TAIL }, // sold out: most leave
        { target: 0, duration: '2s' },
      ],
      exec: 'ramp',
    },
  },
  thresholds: thresholds({
    maxErrorRate: 0.01,
    minCheckRate: 0.999,
    p99Ms: 250,
    maxDropped: Math.floor(planned * 0.01),
  }),
});

export function setup() {
  return setupSale();
}

export function ramp(data) {
  shopper(data);
}

export function handleSummary(data) {
  return summarize(data, 'ramp');
}
