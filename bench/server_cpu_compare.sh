#!/usr/bin/env bash
# bench/server_cpu_compare.sh: the server's own CPU per checkout, of two builds
# side by side with the bare responder (the ceiling of bench/bench.sh), in
# alternating rounds: the checkout crowd (wrk with bench/checkout.lua, random
# users of USERS, random items of a fresh sale) against each, the order
# rotating every round, and the ratios per round and their medians.
#
#   REF_BIN=/tmp/flashsale-main CUR_BIN=target/release/flashsale \
#     BARE_BIN=target/release/examples/bare_responder ROUNDS=6 bash bench/server_cpu_compare.sh
#
# Sides (SIDES, default "bare ref cur"): bare (BARE_BIN), ref (REF_BIN), cur
# (CUR_BIN), cur_bare (CUR_BARE_BIN: a second bare responder, say the one
# built from the tree under test when its runtime setup differs), and ref_alloc / cur_alloc (REF_ALLOC_BIN / CUR_ALLOC_BIN): builds
# with `--features count-allocs`, whose /metrics count the core threads'
# allocations (`flashsale_core_allocations_total`); for them the report gives
# allocations per request (the counter's change over the requests the server
# answered meanwhile, read from /metrics just before and after wrk). Their CPU
# includes the counting, so compare CPU on the plain builds.
#
# Every server run gets a fresh process, a fresh Postgres database (PG_DB) and
# a flushed Redis database (REDIS_DB). CPU per request is the process's user +
# system time (/proc/PID/stat, before and after wrk) over the requests wrk
# completed; each server's /metrics at the end of its run is kept in OUT. On
# a small shared machine read the per-round ratios and medians.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

SIDES="${SIDES:-bare ref cur}"
ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-8s}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-1}"
BENCH_PORT="${BENCH_PORT:-18380}"
REDIS_PORT="${REDIS_PORT:-6379}"
REDIS_DB="${REDIS_DB:-1013}"
PG_PORT="${PG_PORT:-5432}"
PG_DB="${PG_DB:-fsserver_compare}"
SERVER_CORES="${SERVER_CORES:-$(nproc)}"
SALE_PERIOD_SECS="${SALE_PERIOD_SECS:-3600}"
USERS="${USERS:-1000000}"
ITEMS="${ITEMS:-10000}"
OUT="${OUT:-$(mktemp -d /tmp/server_cpu_compare.XXXXXX)}"
mkdir -p "$OUT"

log() { printf '[server_cpu_compare %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}
for tool in wrk redis-cli psql python3 curl; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done
declare -A BIN=([bare]="${BARE_BIN:-}" [cur_bare]="${CUR_BARE_BIN:-}" [ref]="${REF_BIN:-}" [cur]="${CUR_BIN:-}"
  [ref_alloc]="${REF_ALLOC_BIN:-}" [cur_alloc]="${CUR_ALLOC_BIN:-}")
for side in $SIDES; do
  [[ -v BIN[$side] ]] || die "unknown side '$side' (bare cur_bare ref cur ref_alloc cur_alloc)"
  [[ -x ${BIN[$side]} ]] || die "side $side needs its binary (BARE_BIN, CUR_BARE_BIN, REF_BIN, CUR_BIN, REF_ALLOC_BIN, CUR_ALLOC_BIN)"
  cp "${BIN[$side]}" "$OUT/bin-$side"
done

rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
psql_q() { PGOPTIONS="-c client_min_messages=warning" PGCONNECT_TIMEOUT=5 psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
PG_ADMIN="postgres://flashsale@127.0.0.1:$PG_PORT/postgres"
drop_db() {
  local i
  for ((i = 0; i < 20; i++)); do
    psql_q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  psql_q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null
}
URL="http://127.0.0.1:$BENCH_PORT"
TICK_US=$((1000000 / $(getconf CLK_TCK)))
# the sum of a metric's samples in /metrics (0 when absent)
metric() { curl -fsS --max-time 5 "$URL/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2 } END { printf "%.0f", s }'; }

SERVER_PID=""
stop_server() {
  stop_process "$SERVER_PID"
  SERVER_PID=""
}
cleanup() {
  stop_server
  rcli -n "$REDIS_DB" flushdb >/dev/null 2>&1 || true
  drop_db 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

RESULTS="$OUT/results.txt"
: >"$RESULTS"

# run ROUND SIDE
run() {
  local round=$1 side=$2 bin="$OUT/bin-$2" sale active a0=0 a1=0 q0=0 q1=0
  local log_file="$OUT/server-r$round-$side.log"
  if ss -ltnH "sport = :$BENCH_PORT" | grep -q .; then die "port $BENCH_PORT is taken: set BENCH_PORT"; fi
  if [[ $side == bare || $side == cur_bare ]]; then
    "$bin" "127.0.0.1:$BENCH_PORT" "$SERVER_CORES" >"$log_file" 2>&1 &
    SERVER_PID=$!
    for ((i = 0; i < 100; i++)); do
      ss -ltnH "sport = :$BENCH_PORT" | grep -q . && break
      sleep 0.1
    done
    sale=$(($(date +%s) / SALE_PERIOD_SECS))
  else
    local now left
    now="$(date +%s)" left=$((SALE_PERIOD_SECS - now % SALE_PERIOD_SECS))
    if ((left < ${DURATION%s} + 60)); then
      log "the sale period ends in $left s: waiting for the next one"
      sleep $((left + 2))
    fi
    drop_db
    psql_q "$PG_ADMIN" -c "CREATE DATABASE $PG_DB" >/dev/null
    rcli -n "$REDIS_DB" flushdb >/dev/null
    env FLASHSALE_LISTEN="127.0.0.1:$BENCH_PORT" REDIS_URL="redis://127.0.0.1:$REDIS_PORT/$REDIS_DB" \
      DATABASE_URL="postgres://flashsale@127.0.0.1:$PG_PORT/$PG_DB" FLASHSALE_CORES="$SERVER_CORES" \
      SALE_PERIOD_SECS="$SALE_PERIOD_SECS" FLASHSALE_LOG=warn "$bin" >"$log_file" 2>&1 &
    SERVER_PID=$!
    active="$(wait_active_sale "$URL" "$SERVER_PID")" || die "no active sale (or the server exited); see $log_file"
    sale="$(json_field "$active" sale_id)"
    a0="$(metric flashsale_core_allocations_total)" q0="$(metric flashsale_requests_total)"
  fi
  local s0 s1 out="$OUT/wrk-r$round-$side.txt"
  s0=$(cpu_ticks "$SERVER_PID")
  env COUNT_STATUS=1 USERS="$USERS" SALE_ID="$sale" ITEMS="$ITEMS" \
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s bench/checkout.lua "$URL" >"$out" 2>&1 ||
    die "wrk failed: $(tail -n 3 "$out")"
  s1=$(cpu_ticks "$SERVER_PID")
  if [[ $side != bare && $side != cur_bare ]]; then
    a1="$(metric flashsale_core_allocations_total)" q1="$(metric flashsale_requests_total)"
    curl -fsS --max-time 5 "$URL/metrics" >"$OUT/metrics-r$round-$side.txt" || true
  fi
  stop_server
  [[ $side == bare || $side == cur_bare ]] || rcli -n "$REDIS_DB" flushdb >/dev/null
  local line rps n cpu allocs statuses
  line="$(grep -m1 '^BENCH ' "$out")" || die "no BENCH line in $out"
  field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $line"; }
  rps="$(field rps)" n="$(field requests)"
  statuses="$(tr ' ' '\n' <<<"$line" | grep -E '^s[0-9]{3}=' | tr '\n' ' ')"
  cpu="$(awk -v t=$((s1 - s0)) -v us="$TICK_US" -v n="$n" 'BEGIN { printf "%.2f", t * us / n }')"
  allocs="$(awk -v a=$((a1 - a0)) -v q=$((q1 - q0)) 'BEGIN { if (q > 0 && a > 0) printf "%.3f", a / q; else print "-" }')"
  echo "$round $side $rps $cpu $allocs" >>"$RESULTS"
  printf '  r%-2s %-9s %9.0f req/s  server CPU/req %6s us  allocations/req %6s  (%s)\n' \
    "$round" "$side" "$rps" "$cpu" "$allocs" "$statuses" >&2
}

read -ra sides <<<"$SIDES"
log "sides: $SIDES; $ROUNDS rounds of wrk -t$THREADS -c$CONNECTIONS -d$DURATION; output in $OUT"
for ((round = 1; round <= ROUNDS; round++)); do
  for ((k = 0; k < ${#sides[@]}; k++)); do
    run "$round" "${sides[$(((k + round - 1) % ${#sides[@]}))]}"
  done
done

python3 - "$RESULTS" "$SIDES" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
sides = sys.argv[2].split()
by = {}
for r, side, rps, cpu, allocs in rows:
    by.setdefault(side, {})[int(r)] = (float(rps), float(cpu), None if allocs == "-" else float(allocs))
print("| side | median req/s | median server CPU µs/req | each round's CPU µs/req | median allocations/req |")
print("| --- | ---: | ---: | --- | ---: |")
for s in sides:
    runs = by.get(s, {})
    al = [v[2] for v in runs.values() if v[2] is not None]
    print(f"| {s} | {statistics.median(v[0] for v in runs.values()):,.0f} "
          f"| {statistics.median(v[1] for v in runs.values()):.2f} "
          f"| {' '.join(f'{runs[r][1]:.2f}' for r in sorted(runs))} "
          f"| {statistics.median(al) if al else '-'} |")
def ratio(b, a):
    if a not in by or b not in by: return
    rounds = sorted(set(by[a]) & set(by[b]))
    cpu = [by[b][r][1] / by[a][r][1] for r in rounds]
    rps = [by[b][r][0] / by[a][r][0] for r in rounds]
    print(f"| {b} / {a} | {statistics.median(cpu):.3f} | {' '.join(f'{c:.3f}' for c in cpu)} "
          f"| {statistics.median(rps):.3f} | {' '.join(f'{x:.3f}' for x in rps)} |")
print()
print("| ratio | median CPU/req | each round | median req/s | each round |")
print("| --- | ---: | --- | ---: | --- |")
for b, a in [("cur", "ref"), ("ref", "bare"), ("cur", "bare"), ("cur_bare", "bare"),
             ("cur", "cur_bare"), ("cur_alloc", "ref_alloc")]:
    ratio(b, a)
EOF
