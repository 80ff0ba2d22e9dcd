#!/usr/bin/env bash
# bench/layout_crowd_compare.sh: the checkout crowd (bench/checkout.lua: wrk
# -c64, random users uniform over USERS, random items of a fresh sale)
# against two server binaries, REF_BIN and CUR_BIN, alternating (which goes
# first flips every round), each run on a fresh sale in its own database of
# a private redis-server with the shipped durability settings (AOF everysec,
# lazyfree-lazy-expire) and its own Postgres database. Per run: checkouts/s
# (the server's own count of POST /checkout, over the run), and Redis's CPU
# time per checkout (user + system, /proc of the private redis-server, which
# serves nothing else), and per checkout that went to Redis (calls in
# checkout.lua batches, from the server's metrics: a run that shed checkouts
# with 503, writer queue full, answered those without Redis; each run prints
# its count of non-2xx answers). The binaries embed their lua/, so REF_BIN is a build
# of the commit to compare with (cargo build --release in a worktree of it).
#
#   REF_BIN=/tmp/flashsale-ref CUR_BIN=target/release/flashsale bash bench/layout_crowd_compare.sh
#
# Knobs: ROUNDS (3), DURATION (10s), CONNECTIONS (64), USERS (1000000),
# SERVER_CORES (every core), REDIS_PORT (first free from 6390 up),
# BENCH_PORT (18090), PG_URL (postgres://flashsale@127.0.0.1:5432, the
# servers' user), PG_ADMIN_URL (postgres://postgres@127.0.0.1:5432, which
# creates a database fslayout_<n> owned by flashsale per run and drops it).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

REF_BIN=${REF_BIN:?set REF_BIN to the reference build}
CUR_BIN=${CUR_BIN:-target/release/flashsale}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
USERS=${USERS:-1000000}
SERVER_CORES=${SERVER_CORES:-$(nproc)}
BENCH_PORT=${BENCH_PORT:-18090}
PG_URL=${PG_URL:-postgres://flashsale@127.0.0.1:5432}
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432}

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}
for tool in redis-server redis-cli wrk psql curl; do
  command -v "$tool" >/dev/null || die "$tool is missing (scripts/bench-tools.sh installs wrk)"
done
REDIS_PORT=${REDIS_PORT:-$(free_redis_port)} || die "no free port from 6390 up"
port_listening "$REDIS_PORT" && die "port $REDIS_PORT is taken"
port_listening "$BENCH_PORT" && die "port $BENCH_PORT is taken"

WORK="$(mktemp -d /tmp/layout-crowd.XXXXXX)"
REDIS_PID=""
SERVER_PID=""
PG_DB=""
psql_() { PGOPTIONS='-c client_min_messages=warning' psql -X -q -v ON_ERROR_STOP=1 "$PG_ADMIN_URL/postgres" "$@"; }
cleanup() {
  stop_process "$SERVER_PID"
  stop_process "$REDIS_PID"
  [[ -n $PG_DB ]] && psql_ -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

private_redis_start "$WORK" "$REDIS_PORT" || die "no private redis-server"
log "private redis on $REDIS_PORT (pid $REDIS_PID); ref $REF_BIN, cur $CUR_BIN"

checkouts() {
  curl -fsS "http://127.0.0.1:$BENCH_PORT/metrics" |
    { grep -E '^flashsale_requests_total\{route="checkout"' || true; } | awk '{ s += $NF } END { printf "%.0f\n", s }'
}
# Checkouts that went to Redis (calls in checkout.lua batches): fewer than the
# checkouts when the server shed some (503: writer queue full) without Redis.
redis_calls() {
  curl -fsS "http://127.0.0.1:$BENCH_PORT/metrics" |
    { grep -E '^flashsale_redis_batch_calls_sum\{script="checkout"' || true; } | awk '{ s += $NF } END { printf "%.0f\n", s }'
}

# A run must not see its sale end (the hourly sale, SALE_PERIOD_SECS of the
# servers' default 3600): wait for the next period when this one ends too soon.
SALE_PERIOD_SECS=3600
secs_of() { case $1 in *m) echo $((${1%m} * 60)) ;; *s) echo "${1%s}" ;; *) echo "$1" ;; esac; }
guard_period() {
  local left=$((SALE_PERIOD_SECS - $(date +%s) % SALE_PERIOD_SECS)) need=$(($(secs_of "$DURATION") + 40))
  if ((left < need)); then
    log "the sale period ends in $left s: waiting for the next one"
    sleep $((left + 2))
  fi
}

RESULTS="$WORK/results"
: >"$RESULTS"
run() { # round side bin db
  local round=$1 side=$2 bin=$3 db=$4 active sale items r0 c0 k0 s0 r1 c1 k1 s1 secs
  guard_period
  PG_DB="fslayout_$db"
  psql_ -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null
  psql_ -c "CREATE DATABASE $PG_DB OWNER flashsale" >/dev/null
  redis-cli -p "$REDIS_PORT" -n "$db" flushdb >/dev/null
  FLASHSALE_LISTEN="127.0.0.1:$BENCH_PORT" REDIS_URL="redis://127.0.0.1:$REDIS_PORT/$db" \
    DATABASE_URL="$PG_URL/$PG_DB" FLASHSALE_CORES="$SERVER_CORES" FLASHSALE_LOG=warn \
    "$bin" >"$WORK/server-$side-$round.log" 2>&1 &
  SERVER_PID=$!
  active=""
  for ((i = 0; i < 600; i++)); do
    active="$(curl -fsS --max-time 2 "http://127.0.0.1:$BENCH_PORT/sales/active" 2>/dev/null || true)"
    [[ -n $active ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || die "server exited: $(tail -n 5 "$WORK/server-$side-$round.log")"
    sleep 0.1
  done
  sale="$(echo "$active" | sed -n 's/.*"sale_id":\([0-9]*\).*/\1/p')"
  items="$(echo "$active" | sed -n 's/.*"items_total":\([0-9]*\).*/\1/p')"
  r0=$(cpu_ticks "$REDIS_PID")
  s0=$(cpu_ticks "$SERVER_PID")
  c0=$(checkouts)
  k0=$(redis_calls)
  secs=$(date +%s%N)
  SALE_ID=$sale ITEMS=$items USERS=$USERS wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -s bench/checkout.lua \
    "http://127.0.0.1:$BENCH_PORT" >"$WORK/wrk-$side-$round.txt" 2>&1
  c1=$(checkouts)
  k1=$(redis_calls)
  r1=$(cpu_ticks "$REDIS_PID")
  s1=$(cpu_ticks "$SERVER_PID")
  secs=$((($(date +%s%N) - secs) / 1000000))
  stop_process "$SERVER_PID"
  SERVER_PID=""
  psql_ -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null
  PG_DB=""
  redis-cli -p "$REDIS_PORT" -n "$db" flushdb >/dev/null
  non2xx="$(sed -n 's/.*Non-2xx or 3xx responses: *\([0-9]*\).*/\1/p' "$WORK/wrk-$side-$round.txt")"
  awk -v r="$round" -v s="$side" -v n=$((c1 - c0)) -v ms="$secs" -v rt=$((r1 - r0)) -v st=$((s1 - s0)) \
    -v us=$((1000000 / $(getconf CLK_TCK))) -v bad="${non2xx:-0}" -v k=$((k1 - k0)) 'BEGIN {
      printf "%s %s %.0f %.2f %.2f %.2f\n", r, s, n / (ms / 1000), rt * us / n, st * us / n, rt * us / k >> "'"$RESULTS"'"
      printf "  r%-2s %-3s %8.0f checkouts/s  Redis %6.2f us CPU/checkout (%6.2f per call to Redis)  server %6.2f us CPU/checkout (%d checkouts, %d to Redis, %d not 2xx)\n",
        r, s, n / (ms / 1000), rt * us / n, rt * us / k, st * us / n, n, k, bad
    }'
}

echo "Runs (wrk -t1 -c$CONNECTIONS -d$DURATION bench/checkout.lua, users 1..$USERS):"
db=0
for ((round = 1; round <= ROUNDS; round++)); do
  if ((round % 2)); then order="ref cur"; else order="cur ref"; fi
  for side in $order; do
    db=$((db + 1))
    if [[ $side == ref ]]; then bin=$REF_BIN; else bin=$CUR_BIN; fi
    run "$round" "$side" "$bin" "$db"
  done
done

echo
echo "cur / ref per round, and medians:"
python3 - "$RESULTS" "$ROUNDS" <<'EOF'
import statistics
import sys

rows = [line.split() for line in open(sys.argv[1])]
rounds = int(sys.argv[2])
by = {}
for r, side, *vals in rows:
    by.setdefault(int(r), {})[side] = [float(v) for v in vals]
names = ["checkouts/s", "Redis CPU us/checkout", "server CPU us/checkout",
         "Redis CPU us/call to Redis"]
print(f"| | {' | '.join(f'round {r}: ref / cur' for r in range(1, rounds + 1))} | median ref | median cur | median cur/ref |")
print(f"| --- | {' | '.join('---' for _ in range(rounds))} | ---: | ---: | ---: |")
for k, name in enumerate(names):
    cells, ratios = [], []
    for r in range(1, rounds + 1):
        o, n = by[r]["ref"][k], by[r]["cur"][k]
        ratios.append(n / o)
        cells.append(f"{o:,.2f} / {n:,.2f}")
    mo = statistics.median(by[r]["ref"][k] for r in by)
    mn = statistics.median(by[r]["cur"][k] for r in by)
    print(f"| {name} | {' | '.join(cells)} | {mo:,.2f} | {mn:,.2f} | **{statistics.median(ratios):.3f}** |")
EOF
