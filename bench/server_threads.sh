#!/usr/bin/env bash
# bench/server_threads.sh: where one build's CPU goes per checkout, thread by
# thread (core-0.., pg-writer, rotator, the main thread, r2d2 workers), on the
# checkout crowd (wrk -t1 -c64 with bench/checkout.lua, random users of USERS,
# random items of a fresh sale): each thread's user and system time
# (/proc/PID/task/TID/stat, before and after wrk) over the requests wrk
# completed. Run it alternately on two builds and read the ratios per run.
#
#   BIN=target/release/flashsale REDIS_PORT=6392 PG_PORT=5442 bash bench/server_threads.sh
#
# A fresh Postgres database (PG_DB) and a flushed Redis database (REDIS_DB) per run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

BIN="${BIN:-target/release/flashsale}"
DURATION="${DURATION:-8s}"
BENCH_PORT="${BENCH_PORT:-18390}"
REDIS_PORT="${REDIS_PORT:-6379}"
REDIS_DB="${REDIS_DB:-1014}"
PG_PORT="${PG_PORT:-5432}"
PG_DB="${PG_DB:-fsserver_threads}"
USERS="${USERS:-1000000}"
ITEMS="${ITEMS:-10000}"

PG_ADMIN="postgres://flashsale@127.0.0.1:$PG_PORT/postgres"
psql_q() { PGOPTIONS="-c client_min_messages=warning" psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
URL="http://127.0.0.1:$BENCH_PORT"
psql_q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" -c "CREATE DATABASE $PG_DB" >/dev/null
redis-cli -p "$REDIS_PORT" -n "$REDIS_DB" flushdb >/dev/null
env FLASHSALE_LISTEN="127.0.0.1:$BENCH_PORT" REDIS_URL="redis://127.0.0.1:$REDIS_PORT/$REDIS_DB" \
  DATABASE_URL="postgres://flashsale@127.0.0.1:$PG_PORT/$PG_DB" FLASHSALE_LOG=warn "$BIN" >/dev/null 2>&1 &
PID=$!
cleanup() {
  kill -TERM "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  redis-cli -p "$REDIS_PORT" -n "$REDIS_DB" flushdb >/dev/null 2>&1 || true
  psql_q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT
active="$(wait_active_sale "$URL" "$PID")"
sale="$(json_field "$active" sale_id)"
# name user-ticks system-ticks, one line per thread
snap() { for t in /proc/"$PID"/task/*; do printf '%s %s\n' "$(tr ' ' '_' <"$t/comm")" "$(awk '{ print $14, $15 }' "$t/stat")"; done; }
before="$(snap)"
out="$(env COUNT_STATUS=1 USERS="$USERS" SALE_ID="$sale" ITEMS="$ITEMS" \
  wrk -t1 -c64 -d"$DURATION" -s bench/checkout.lua "$URL")"
after="$(snap)"
line="$(grep -m1 '^BENCH ' <<<"$out")"
echo "$line" | cut -d' ' -f1-4
n="$(sed -n 's/.* requests=\([0-9]*\).*/\1/p' <<<" $line")"
awk -v n="$n" -v us=$((1000000 / $(getconf CLK_TCK))) '
  FNR == NR { u0[$1] += $2; s0[$1] += $3; next }
  { u1[$1] += $2; s1[$1] += $3 }
  END {
    for (k in u1) {
      u = (u1[k] - u0[k]) * us / n; s = (s1[k] - s0[k]) * us / n; t += u + s
      printf "%-16s %6.3f us/checkout (user %.3f, system %.3f)\n", k, u + s, u, s
    }
    printf "%-16s %6.3f us/checkout over %d checkouts\n", "process", t, n
  }' <(echo "$before") <(echo "$after") | sort
