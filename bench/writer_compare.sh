#!/usr/bin/env bash
# The Postgres writer on the checkout crowd, two builds side by side: rows of
# `checkouts` recorded per second and Postgres CPU per recorded row, runs
# alternating A, B, A, B, ... so that a drifting host hits both alike.
#
#   A_BIN=/path/to/flashsale-before B_BIN=target/release/flashsale bash bench/writer_compare.sh
#   ROUNDS=3 DURATION=10s CONNECTIONS=64 bash bench/writer_compare.sh
#   MODE=postsellout ... : a sale of 100 items, sold out first (10 users buy
#   10 each), then the crowd: every checkout a 409 item_sold row
#
# Each run gets a fresh Postgres database and Redis database, a server with the
# default batching, `wrk` with bench/checkout.lua (random users, random items of
# the fresh sale) for DURATION, then waits until every answered checkout is a
# row and then USERS_SETTLE more seconds (default 2: a writer may commit the
# crowd's users after its checkouts), and counts the users rows. Postgres CPU
# is the user+system time of the backends connected to the run's database
# (from /proc, sampled after the server started and after the drain), so
# other databases' work on a shared cluster is not counted.
# Needs Redis on REDIS_PORT and Postgres on PG_PORT (user flashsale) running.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
A_BIN="${A_BIN:?A_BIN: the reference build}"
B_BIN="${B_BIN:-$ROOT/target/release/flashsale}"
A_NAME="${A_NAME:-A}"
B_NAME="${B_NAME:-B}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-1}"
PORT="${PORT:-18190}"
REDIS_PORT="${REDIS_PORT:-6379}"
REDIS_DB="${REDIS_DB:-1020}"
PG_PORT="${PG_PORT:-5432}"
PG_DB="${PG_DB:-fswriter_compare}"
CORES="${CORES:-$(nproc)}"
MODE="${MODE:-checkout}"
USERS_SETTLE="${USERS_SETTLE:-2}"
case $MODE in
  checkout) SALE_ITEMS_ENV=() ;;
  postsellout) SALE_ITEMS_ENV=(SALE_ITEMS=100) ;;
  *) echo "MODE: checkout or postsellout" >&2; exit 1 ;;
esac
OUT="${OUT:-$(mktemp -d /tmp/writer_compare.XXXXXX)}"
mkdir -p "$OUT"

PG_ADMIN="postgres://flashsale@127.0.0.1:$PG_PORT/postgres"
TICKS="$(getconf CLK_TCK)"
psql_q() { psql -X -At "$1" -c "$2"; }
log() { echo "[writer_compare] $*" >&2; }

# user+system ticks of the backends connected to $PG_DB
pg_ticks() {
  local total=0 pid f
  for pid in $(psql_q "postgres://flashsale@127.0.0.1:$PG_PORT/$PG_DB" \
    "select pid from pg_stat_activity where datname = '$PG_DB' and pid <> pg_backend_pid()"); do
    f="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
    f="${f##*) }"
    # fields after the command: state is 3, utime 14, stime 15
    set -- $f
    total=$((total + ${12} + ${13}))
  done
  echo "$total"
}

SERVER_PID=""
trap '[[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null; true' EXIT

run_one() { # name binary round
  local name=$1 bin=$2 round=$3 log_file="$OUT/$1-r$3.log" active sale items answered rows t0 t1 ticks0 ticks1
  redis-cli -p "$REDIS_PORT" -n "$REDIS_DB" flushdb >/dev/null
  psql_q "$PG_ADMIN" "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null
  psql_q "$PG_ADMIN" "CREATE DATABASE $PG_DB" >/dev/null
  if ss -ltnH "sport = :$PORT" | grep -q .; then
    log "port $PORT is taken (another server?): set PORT"
    exit 1
  fi
  env FLASHSALE_LISTEN="127.0.0.1:$PORT" REDIS_URL="redis://127.0.0.1:$REDIS_PORT/$REDIS_DB" \
    DATABASE_URL="postgres://flashsale@127.0.0.1:$PG_PORT/$PG_DB" FLASHSALE_CORES="$CORES" \
    FLASHSALE_LOG=warn "${SALE_ITEMS_ENV[@]}" "$bin" >"$log_file" 2>&1 &
  SERVER_PID=$!
  active="$(wait_active_sale "http://127.0.0.1:$PORT" "$SERVER_PID")" ||
    { log "no active sale after 60 s, or the server exited; see $log_file"; exit 1; }
  sale="$(json_field "$active" sale_id)"
  items="$(json_field "$active" items_total)"
  if [[ $MODE == postsellout ]]; then
    local u n code
    for u in $(seq 10); do
      for n in $(seq $(((u - 1) * 10 + 1)) $((u * 10))); do
        code="$(json_field "$(curl -fsS -X POST "http://127.0.0.1:$PORT/checkout?user_id=$((2000000 + u))&id=$((sale * 1000000 + n))")" code)"
      done
      curl -fsS -o /dev/null -X POST "http://127.0.0.1:$PORT/purchase?code=$code"
    done
    active="$(curl -fsS "http://127.0.0.1:$PORT/sales/active")"
    [[ $(json_field "$active" items_sold) == "$(json_field "$active" items_total)" ]] ||
      { log "sellout failed: $active"; exit 1; }
  fi
  # warm the pool: one checkout so the writer holds its connections
  curl -sS -o /dev/null -X POST "http://127.0.0.1:$PORT/checkout?user_id=1&id=$((sale * 1000000 + 1))"
  sleep 1
  ticks0="$(pg_ticks)"
  t0="$(date +%s.%N)"
  SALE_ID="$sale" ITEMS="$items" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" \
    -s "$ROOT/bench/checkout.lua" "http://127.0.0.1:$PORT" >"$OUT/$name-r$round.wrk" 2>&1
  t1="$(date +%s.%N)"
  answered="$(curl -fsS "http://127.0.0.1:$PORT/metrics" |
    awk '/^flashsale_requests_total\{route="checkout",status="(200|404|409)"\}/ {s += $2} END {print s + 0}')"
  for _ in $(seq 600); do
    rows="$(psql_q "postgres://flashsale@127.0.0.1:$PG_PORT/$PG_DB" "select count(*) from checkouts")"
    [[ $rows -ge $answered ]] && break
    sleep 0.1
  done
  sleep "$USERS_SETTLE"
  ticks1="$(pg_ticks)"
  users="$(psql_q "postgres://flashsale@127.0.0.1:$PG_PORT/$PG_DB" "select count(*) from users")"
  kill -TERM "$SERVER_PID"
  wait "$SERVER_PID" || true
  SERVER_PID=""
  python3 - "$name" "$round" "$rows" "$answered" "$t0" "$t1" "$ticks0" "$ticks1" "$TICKS" "$users" <<'EOF'
import sys
name, rnd, rows, answered, t0, t1, k0, k1, hz, users = sys.argv[1:]
rows, answered = int(rows), int(answered)
secs = float(t1) - float(t0)
cpu_s = (int(k1) - int(k0)) / int(hz)
print(f"{name}\tr{rnd}\t{rows}\t{answered}\t{users}\t{secs:.2f}\t{rows / secs:.0f}\t{cpu_s:.2f}\t{cpu_s / max(rows, 1) * 1e6:.2f}")
EOF
}

log "results in $OUT; A=$A_BIN ($A_NAME) B=$B_BIN ($B_NAME); MODE=$MODE"
printf 'build\tround\trows\tanswered\tusers\tload_s\trows_per_s\tpg_cpu_s\tpg_cpu_us_per_row\n' | tee "$OUT/runs.tsv"
for round in $(seq "$ROUNDS"); do
  # alternate which goes first, so neither always follows the other
  if ((round % 2)); then order=("A" "B"); else order=("B" "A"); fi
  for which in "${order[@]}"; do
    if [[ $which == A ]]; then run_one "$A_NAME" "$A_BIN" "$round"; else run_one "$B_NAME" "$B_BIN" "$round"; fi | tee -a "$OUT/runs.tsv"
  done
done
psql_q "$PG_ADMIN" "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null
redis-cli -p "$REDIS_PORT" -n "$REDIS_DB" flushdb >/dev/null
python3 - "$OUT/runs.tsv" "$A_NAME" "$B_NAME" <<'EOF'
import csv, sys, statistics
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
a, b = sys.argv[2], sys.argv[3]
def med(name, key):
    return statistics.median(float(r[key]) for r in rows if r["build"] == name)
print(f"median rows/s        {a}: {med(a, 'rows_per_s'):.0f}  {b}: {med(b, 'rows_per_s'):.0f}  ratio {b}/{a}: {med(b, 'rows_per_s') / med(a, 'rows_per_s'):.3f}")
print(f"median pg us per row {a}: {med(a, 'pg_cpu_us_per_row'):.2f}  {b}: {med(b, 'pg_cpu_us_per_row'):.2f}  ratio {b}/{a}: {med(b, 'pg_cpu_us_per_row') / med(a, 'pg_cpu_us_per_row'):.3f}")
EOF
