#!/usr/bin/env bash
# The one-command benchmark of flashsale: on this machine, in one go, it runs
# side by side and interleaved
#
#   ceiling      examples/bare_responder (monoio, io_uring, a runtime per core,
#                pinned, SO_REUSEPORT: the server's shell) answering a fixed 200
#   checkout     the checkout crowd: random users, random items of a fresh sale
#   sellout      a crowd buys all items (checkout, then purchase with the code),
#                timed until GET /sales/active shows every item sold
#   postsellout  the crowd after the sellout: every checkout loses (409 item_sold)
#   purchase     POST /purchase with prepared codes, then redis-benchmark running
#                EVALSHA of lua/purchase.lua on the same prepared state (-P 1, -P 16)
#   mixed        browse, checkout a few items, purchase
#   k6           k6 at a fixed arrival rate, for latency
#
# and writes bench/runs/<UTC date-time>-<commit>/report.md (with chart.svg
# and every raw output; git-ignored); bench/runs/latest points at it. Every
# scenario of the service gets its own server process, Redis database and Postgres
# database. The ceiling runs once per round, so each ratio compares runs made
# minutes apart in the same round.
#
#   bash bench/bench.sh                      # default: 2 rounds of 10 s runs (~4 min)
#   QUICK=1 bash bench/bench.sh              # smoke run: 1 round of 3 s runs
#   REDIS_PORT=6391 PG_PORT=5441 BENCH_PORT=18080 ROUNDS=3 bash bench/bench.sh
#
# Every knob is an environment variable; bench/README.md lists them all.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

# ---------------------------------------------------------------------------
# knobs
# ---------------------------------------------------------------------------

QUICK="${QUICK:-0}"
if [[ $QUICK == 1 ]]; then
  : "${DURATION:=3s}" "${ROUNDS:=1}" "${K6_DURATION:=3s}" "${PURCHASE_CODES:=20000}"
  : "${SELLOUT_MAX:=15}"
fi
DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-1}"
ROUNDS="${ROUNDS:-2}"
SCENARIOS="${SCENARIOS:-ceiling checkout sellout purchase mixed k6}"
WRK_CPUS="${WRK_CPUS:-}"

REDIS_PORT="${REDIS_PORT:-6379}"
PG_PORT="${PG_PORT:-5432}"
BENCH_PORT="${BENCH_PORT:-18080}"
BARE_PORT="${BARE_PORT:-18081}"
REDIS_DB_BASE="${REDIS_DB_BASE:-1000}"
PG_DB_PREFIX="${PG_DB_PREFIX:-fsbench}"
SERVER_CORES="${SERVER_CORES:-$(nproc)}"
SERVER_LOG="${SERVER_LOG:-warn}"

SALE_ITEMS="${SALE_ITEMS:-10000}"
USER_LIMIT="${USER_LIMIT:-10}"
SALE_PERIOD_SECS="${SALE_PERIOD_SECS:-3600}"
USERS="${USERS:-1000000}"

SELLOUT_PICK="${SELLOUT_PICK:-perm}"
SELLOUT_CART="${SELLOUT_CART:-5}"
SELLOUT_MAX="${SELLOUT_MAX:-30}"
POLL_MS="${POLL_MS:-10}"
PURCHASE_CODES="${PURCHASE_CODES:-100000}"
PURCHASE_MAX_ITEMS="${PURCHASE_MAX_ITEMS:-3}"
RB_CLIENTS="${RB_CLIENTS:-$CONNECTIONS}"
MIXED_PAGE="${MIXED_PAGE:-50}"
MIXED_MAX_ITEMS="${MIXED_MAX_ITEMS:-3}"
K6="${K6:-1}"
K6_SCRIPT="${K6_SCRIPT:-k6/flash_crowd.js}"
K6_RATE="${K6_RATE:-500}"
K6_DURATION="${K6_DURATION:-10s}"
DRAIN_TIMEOUT="${DRAIN_TIMEOUT:-60}"
PURCHASE_LUA="${PURCHASE_LUA:-lua/purchase.lua}"

SETUP="${SETUP:-1}"
KEEP_SERVICES="${KEEP_SERVICES:-0}"
KEEP_DBS="${KEEP_DBS:-0}"

# Messages go to fd 3, a copy of the terminal's stderr: a trap (Ctrl-C) runs
# wherever the script was, maybe inside a redirection of stderr to a file.
exec 3>&2
log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&3; }
die() { printf '[bench] ERROR: %s\n' "$*" >&3; exit 1; }

# "10s", "2m", "1500ms" or a bare number of seconds -> whole seconds (at least 1)
secs() {
  local v=$1
  case $v in
    *ms) v=$(((${v%ms} + 999) / 1000)) ;;
    *s) v=${v%s} ;;
    *m) v=$((${v%m} * 60)) ;;
    *h) v=$((${v%h} * 3600)) ;;
  esac
  [[ $v =~ ^[0-9]+$ ]] || die "not a duration: $1"
  ((v > 0)) || v=1
  echo "$v"
}
DURATION_S="$(secs "$DURATION")"
K6_DURATION_S="$(secs "$K6_DURATION")"
for v in CONNECTIONS THREADS ROUNDS SERVER_CORES SALE_ITEMS USER_LIMIT SALE_PERIOD_SECS USERS \
  SELLOUT_MAX POLL_MS PURCHASE_CODES PURCHASE_MAX_ITEMS RB_CLIENTS MIXED_PAGE MIXED_MAX_ITEMS \
  K6_RATE DRAIN_TIMEOUT REDIS_PORT PG_PORT BENCH_PORT BARE_PORT REDIS_DB_BASE; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, not '${!v}'"
done
[[ $SELLOUT_PICK == perm || $SELLOUT_PICK == random ]] || die "SELLOUT_PICK must be perm or random"
[[ $SELLOUT_CART =~ ^[0-9]+$ ]] && ((SELLOUT_CART >= 1 && SELLOUT_CART <= USER_LIMIT)) ||
  die "SELLOUT_CART must be 1..USER_LIMIT"
[[ $PG_DB_PREFIX =~ ^[a-z_][a-z0-9_]*$ ]] || die "PG_DB_PREFIX must be a plain lowercase name"
want() { [[ " $SCENARIOS " == *" $1 "* ]]; }

# ---------------------------------------------------------------------------
# processes we start, and cleaning up after them (also on Ctrl-C)
# ---------------------------------------------------------------------------

rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
psql_admin() {
  PGOPTIONS='-c client_min_messages=warning' PGCONNECT_TIMEOUT=5 psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres "$@"
}
psql_app() { # db, psql args...
  local db=$1
  shift
  PGCONNECT_TIMEOUT=5 psql -X -q -tA -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U flashsale -d "$db" "$@"
}

SERVICES_STARTED=0
SERVER_PID=""
BARE_PID=""
PG_DBS=()
REDIS_DBS=()

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if [[ -n $SERVER_PID ]]; then stop_process "$SERVER_PID"; fi
  if [[ -n $BARE_PID ]]; then stop_process "$BARE_PID"; fi
  if [[ $KEEP_DBS != 1 ]]; then
    local db
    for db in "${REDIS_DBS[@]}"; do rcli -n "$db" flushdb >/dev/null 2>&1; done
    for db in "${PG_DBS[@]}"; do
      psql_admin -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1
    done
  fi
  if [[ $SERVICES_STARTED == 1 && $KEEP_SERVICES != 1 ]]; then
    log "stopping the services this run started"
    REDIS_PORT=$REDIS_PORT PG_PORT=$PG_PORT bash scripts/services.sh stop >/dev/null 2>&1
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ---------------------------------------------------------------------------
# setup: tools, services, build
# ---------------------------------------------------------------------------

if [[ $SETUP == 1 ]]; then
  log "tools: scripts/bench-tools.sh"
  bash scripts/bench-tools.sh
  if REDIS_PORT=$REDIS_PORT PG_PORT=$PG_PORT bash scripts/services.sh status >/dev/null 2>&1; then
    log "services already up (Redis :$REDIS_PORT, Postgres :$PG_PORT); they stay up afterwards"
  else
    log "services: scripts/services.sh start (Redis :$REDIS_PORT, Postgres :$PG_PORT)"
    REDIS_PORT=$REDIS_PORT PG_PORT=$PG_PORT bash scripts/services.sh start >/dev/null ||
      die "scripts/services.sh start failed (above); to bench against services this checkout did not start, run with SETUP=0"
    SERVICES_STARTED=1
  fi
  if [[ -f $HOME/.cargo/env ]] && ! command -v cargo >/dev/null 2>&1; then
    # shellcheck source=/dev/null
    . "$HOME/.cargo/env"
  fi
  log "build: cargo build --release; cargo build --release --example bare_responder"
  cargo build --release --quiet
  cargo build --release --quiet --example bare_responder
fi

# k6 from the project's virtual environment (scripts/bench-tools.sh installs it
# there), or K6_BIN.
K6_BIN="${K6_BIN:-$ROOT/.local/venv/bin/k6}"
[[ -x $K6_BIN ]] || K6_BIN=""
if want k6 && [[ $K6 == 1 && -z $K6_BIN ]]; then
  log "k6 not found: the k6 scenario is skipped (scripts/bench-tools.sh installs it)"
  K6=0
fi
if want k6 && [[ $K6 == 1 && ! -f $K6_SCRIPT ]]; then
  log "K6_SCRIPT=$K6_SCRIPT does not exist: the k6 scenario is skipped"
  K6=0
fi
for tool in wrk curl python3 redis-cli redis-benchmark psql ss taskset; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (SETUP=1 installs what is missing)"
done
SERVER_BIN="$ROOT/target/release/flashsale"
BARE_BIN="$ROOT/target/release/examples/bare_responder"
[[ -x $SERVER_BIN ]] || die "missing $SERVER_BIN (cargo build --release)"
[[ -x $BARE_BIN ]] || die "missing $BARE_BIN (cargo build --release --example bare_responder)"

[[ $(rcli ping 2>/dev/null) == PONG ]] || die "no Redis answers on 127.0.0.1:$REDIS_PORT (scripts/services.sh start)"
psql_admin -c 'select 1' >/dev/null || die "no Postgres answers on 127.0.0.1:$PG_PORT as user postgres"
# Start from a compacted AOF, so that no rewrite (a fork copying the whole
# dataset) is triggered by an earlier run's log in the middle of a scenario;
# each scenario's own writes stay far below the shipped 1 GB threshold.
if [[ $(rcli config get appendonly | sed -n 2p) == yes ]]; then
  log "redis: BGREWRITEAOF before the rounds"
  rcli bgrewriteaof >/dev/null 2>&1 || true
  for _ in $(seq 600); do
    rcli info persistence | tr -d '\r' | grep -cE '^aof_rewrite_(in_progress|scheduled):0$' | grep -q 2 && break
    sleep 0.1
  done
fi
DBS_MAX="$(rcli config get databases | sed -n 2p)"
((REDIS_DB_BASE + 6 < DBS_MAX)) || die "Redis has $DBS_MAX databases; REDIS_DB_BASE=$REDIS_DB_BASE needs 7 from there"

listening() { ss -ltnH "sport = :$1" | grep -q .; }
for port in "$BENCH_PORT" "$BARE_PORT"; do
  if listening "$port"; then
    ss -ltnpH "sport = :$port" >&3
    die "port $port is taken (set BENCH_PORT / BARE_PORT)"
  fi
done

# the listener of a port (postmaster, redis-server)
listener_pid() {
  ss -ltnpH "sport = :$1" | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2
}
REDIS_PID="$(listener_pid "$REDIS_PORT")"
PG_PID="$(listener_pid "$PG_PORT")"
[[ -n $REDIS_PID && -n $PG_PID ]] || die "cannot find the Redis and Postgres processes (ss -ltnp)"

# ---------------------------------------------------------------------------
# results directory
# ---------------------------------------------------------------------------

COMMIT="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
SHORT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
DIRTY=0
if [[ -n $(git status --porcelain -- . ':!bench/results' 2>/dev/null) ]]; then DIRTY=1; fi
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
# Runs go to bench/runs/ (git-ignored), so a run leaves the tree clean; a run
# worth keeping is copied into bench/results/ and committed by hand.
OUT="${RESULTS_DIR:-$ROOT/bench/runs/$STAMP-$SHORT}"
mkdir -p "$OUT/raw" "$OUT/runs" "$OUT/logs"
COMMANDS="$OUT/commands.txt"
: >"$COMMANDS"
log "results: $OUT"

kv() { # file key value
  printf '%s=%s\n' "$2" "$3" >>"$1"
}

version_of() { "$@" 2>&1 | head -n1 | tr -d '\r' || true; }
{
  echo "started_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit=$COMMIT"
  echo "short=$SHORT"
  echo "dirty=$DIRTY"
  echo "branch=$(git rev-parse --abbrev-ref HEAD 2>/dev/null || echo unknown)"
  echo "cpu_model=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n1)"
  echo "cpus=$(nproc)"
  echo "mem_total_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
  echo "kernel=$(cat /proc/sys/kernel/osrelease)"
  echo "loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "v_wrk=$(version_of wrk -v)"
  echo "v_k6=$(if [[ -n $K6_BIN ]]; then version_of "$K6_BIN" version; else echo none; fi)"
  echo "v_redis=$(version_of redis-server --version)"
  echo "v_redis_benchmark=$(version_of redis-benchmark --version)"
  echo "v_postgres=$(psql_admin -tAc 'select version()' | head -n1)"
  echo "v_rustc=$(version_of rustc --version)"
  echo "v_python=$(version_of python3 --version)"
  for v in QUICK DURATION CONNECTIONS THREADS ROUNDS SCENARIOS WRK_CPUS SERVER_CORES SALE_ITEMS \
    USER_LIMIT SALE_PERIOD_SECS USERS SELLOUT_PICK SELLOUT_CART SELLOUT_MAX POLL_MS PURCHASE_CODES \
    PURCHASE_MAX_ITEMS RB_CLIENTS MIXED_PAGE MIXED_MAX_ITEMS K6 K6_SCRIPT K6_RATE K6_DURATION \
    REDIS_PORT PG_PORT BENCH_PORT BARE_PORT SERVER_LOG; do
    echo "set_$v=${!v}"
  done
} >"$OUT/meta.kv"

# ---------------------------------------------------------------------------
# measuring: CPU by process, load generator, raw outputs
# ---------------------------------------------------------------------------

HZ="$(getconf CLK_TCK)"
WRK=(wrk)
if [[ -n $WRK_CPUS ]]; then WRK=(taskset -c "$WRK_CPUS" wrk); fi

# utime+stime of a process (all threads); with children=1 also what its
# reaped children used (cutime+cstime), so processes that exited still count.
proc_ticks() { # pid children(0|1)
  local line rest
  local -a fields
  [[ -n $1 && -r /proc/$1/stat ]] || { echo 0; return; }
  read -r line <"/proc/$1/stat" || { echo 0; return; }
  rest=${line##*) }
  read -r -a fields <<<"$rest"
  if [[ $2 == 1 ]]; then
    echo $((fields[11] + fields[12] + fields[13] + fields[14]))
  else
    echo $((fields[11] + fields[12]))
  fi
}
# a process and its live children (Postgres backends, Redis's forks)
tree_ticks() {
  local total child
  total="$(proc_ticks "$1" 1)"
  for child in $(pgrep -P "$1" || true); do
    total=$((total + $(proc_ticks "$child" 0)))
  done
  echo "$total"
}
# ticks of all CPUs: in processes (user, nice, system), in interrupts
# (irq, softirq: the loopback network's packet work is partly here, charged to
# no process) and stolen by the hypervisor
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4, $7 + $8, $9; exit}' /proc/stat; }

# Sets SNAP[<name>_{ns,server,redis,pg,proc,irq,steal}].
declare -A SNAP=()
cpu_snap() { # name server_pid
  SNAP[$1_ns]="$(date +%s%N)"
  SNAP[$1_server]="$(if [[ -n ${2:-} ]]; then proc_ticks "$2" 1; else echo 0; fi)"
  SNAP[$1_redis]="$(tree_ticks "$REDIS_PID")"
  SNAP[$1_pg]="$(tree_ticks "$PG_PID")"
  read -r "SNAP[$1_proc]" "SNAP[$1_irq]" "SNAP[$1_steal]" < <(machine_ticks)
}

# AOF rewrites Redis has done (a fork that rewrites the log: CPU and disk
# during a run, counted under Redis; the report notes runs with one)
aof_rewrites() {
  rcli info persistence | tr -d '\r' | awk -F: '$1 == "aof_rewrites" {print $2 + 0; found = 1} END {if (!found) print 0}'
}

log_cmd() { # title, command...
  local title=$1
  shift
  {
    echo "# $title"
    printf '%q ' "$@"
    echo
    echo
  } >>"$COMMANDS"
}

# measure KV OUTFILE SERVER_PID -- command...
# Runs the load generator in the foreground (stdout to OUTFILE, stderr to
# OUTFILE.err), with CPU samples of the server, Redis, Postgres and the
# machine around it, and the load generator's own CPU (bash `time`).
TIMEFORMAT='%R %U %S'
measure() {
  local kvf=$1 outf=$2 spid=$3 rc=0 real user sys aof0
  shift 4
  log_cmd "$(basename "$kvf" .kv)" "$@"
  aof0="$(aof_rewrites)"
  cpu_snap a "$spid"
  { time "$@" >"$outf" 2>"$outf.err"; } 2>"$outf.time" || rc=$?
  cpu_snap b "$spid"
  kv "$kvf" aof_rewrites $(($(aof_rewrites) - aof0))
  read -r real user sys <"$outf.time"
  kv "$kvf" raw "${outf#"$OUT"/}"
  kv "$kvf" rc "$rc"
  kv "$kvf" hz "$HZ"
  kv "$kvf" wall_s "$(awk -v a="${SNAP[a_ns]}" -v b="${SNAP[b_ns]}" 'BEGIN {printf "%.3f", (b - a) / 1e9}')"
  kv "$kvf" server_ticks $((SNAP[b_server] - SNAP[a_server]))
  kv "$kvf" redis_ticks $((SNAP[b_redis] - SNAP[a_redis]))
  kv "$kvf" pg_ticks $((SNAP[b_pg] - SNAP[a_pg]))
  kv "$kvf" proc_ticks $((SNAP[b_proc] - SNAP[a_proc]))
  kv "$kvf" irq_ticks $((SNAP[b_irq] - SNAP[a_irq]))
  kv "$kvf" steal_ticks $((SNAP[b_steal] - SNAP[a_steal]))
  kv "$kvf" loadgen_cpu_s "$(awk -v u="$user" -v s="$sys" 'BEGIN {printf "%.3f", u + s}')"
  kv "$kvf" loadgen_real_s "$real"
  if ((rc != 0)); then
    log "  (load generator exited $rc; see ${outf#"$OUT"/}.err)"
  fi
}

new_kv() { # round scenario kind -> path
  local path="$OUT/runs/r$1-$2.kv"
  : >"$path"
  kv "$path" round "$1"
  kv "$path" scenario "$2"
  kv "$path" kind "$3"
  echo "$path"
}

bench_line() { grep -m1 '^BENCH ' "$1" 2>/dev/null || true; }
bench_field() { # file key
  bench_line "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n1
}
show_wrk() { # label file
  local raw=$2
  printf '  %-12s %10s req/s  p50 %6s us  p99 %7s us  p99.9 %7s us  non-2xx %s\n' "$1" \
    "$(bench_field "$raw" rps)" "$(bench_field "$raw" lat_p50_us)" "$(bench_field "$raw" lat_p99_us)" \
    "$(bench_field "$raw" lat_p999_us)" "$(bench_field "$raw" non2xx)" >&2
}

# ---------------------------------------------------------------------------
# the server under test
# ---------------------------------------------------------------------------

URL="http://127.0.0.1:$BENCH_PORT"
SALE_ID=""
ITEMS=""

# Waits, when the current sale period ends within $1 seconds, until the next
# one has started, so that no scenario sees its sale change under it.
guard_period() { # seconds needed
  local now left
  if ((SALE_PERIOD_SECS < $1)); then
    log "  WARNING: SALE_PERIOD_SECS=$SALE_PERIOD_SECS is shorter than this scenario (${1}s): its sale may change under it"
    return 0
  fi
  now="$(date +%s)"
  left=$((SALE_PERIOD_SECS - now % SALE_PERIOD_SECS))
  if ((left < $1)); then
    log "  the sale period ends in ${left}s (< ${1}s needed): waiting for the next one"
    sleep $((left + 3))
  fi
}

metrics() { curl -fsS --max-time 5 "$URL/metrics" || true; }
# sum of the metric samples whose line matches an extended regex (grep -E)
metric_sum() { # regex
  metrics | { grep -E "$1" || true; } | awk '{s += $NF} END {printf "%.0f\n", s}'
}

# start_server NAME REDIS_DB SECONDS_NEEDED: a fresh Redis database and
# Postgres database, the server on them, in a sale period that lasts at least
# SECONDS_NEEDED more; sets SERVER_PID, SALE_ID, ITEMS, PG_DB
start_server() {
  local name=$1 db=$2 active=""
  guard_period "$3"
  PG_DB="${PG_DB_PREFIX}_$name"
  rcli -n "$db" flushdb >/dev/null
  psql_admin -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null
  psql_admin -c "CREATE DATABASE $PG_DB OWNER flashsale" >/dev/null
  [[ " ${PG_DBS[*]} " == *" $PG_DB "* ]] || PG_DBS+=("$PG_DB")
  [[ " ${REDIS_DBS[*]} " == *" $db "* ]] || REDIS_DBS+=("$db")
  local log_file="$OUT/logs/server-$name-r$ROUND.log"
  local env_=(FLASHSALE_LISTEN="127.0.0.1:$BENCH_PORT" REDIS_URL="redis://127.0.0.1:$REDIS_PORT/$db"
    DATABASE_URL="postgres://flashsale@127.0.0.1:$PG_PORT/$PG_DB" SALE_PERIOD_SECS="$SALE_PERIOD_SECS"
    SALE_ITEMS="$SALE_ITEMS" USER_LIMIT="$USER_LIMIT" FLASHSALE_CORES="$SERVER_CORES"
    FLASHSALE_LOG="$SERVER_LOG")
  if listening "$BENCH_PORT"; then
    ss -ltnpH "sport = :$BENCH_PORT" >&3
    die "port $BENCH_PORT was taken meanwhile, by someone else (set BENCH_PORT)"
  fi
  log_cmd "server for $name (round $ROUND)" env "${env_[@]}" "$SERVER_BIN"
  env "${env_[@]}" "$SERVER_BIN" >"$log_file" 2>&1 &
  SERVER_PID=$!
  if ! active="$(wait_active_sale "$URL" "$SERVER_PID")"; then
    tail -n 20 "$log_file" >&2
    die "no active sale on $URL after 60 s, or the server exited; see $log_file"
  fi
  SALE_ID="$(json_field "$active" sale_id)"
  ITEMS="$(json_field "$active" items_total)"
  [[ $SALE_ID =~ ^[0-9]+$ && $ITEMS =~ ^[0-9]+$ ]] || die "unexpected /sales/active: $active"
}

# keeps the server's metrics at the end of a scenario (raw/r<round>-<name>.metrics.txt), then stops it
stop_server() { # name
  metrics >"$OUT/raw/r$ROUND-$1.metrics.txt"
  stop_process "$SERVER_PID"
  SERVER_PID=""
}

drop_pg_db() {
  if [[ $KEEP_DBS != 1 ]]; then
    psql_admin -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null 2>&1 || true
  fi
}

# Waits until the writer has nothing queued and no purchase waits in an
# outbox; prints the ms it took (or "timeout").
wait_writer_idle() { # timeout_s
  local t0 depth pending i
  t0="$(date +%s%N)"
  for ((i = 0; i < $1 * 20; i++)); do
    depth="$(metric_sum '^flashsale_writer_queue_depth ')"
    pending="$(metric_sum '^flashsale_outbox_pending ')"
    if [[ $depth == 0 && $pending == 0 ]]; then
      echo $((($(date +%s%N) - t0) / 1000000))
      return 0
    fi
    sleep 0.05
  done
  echo timeout
}

# The redis-benchmark command for the purchase script, built here only. It
# calls lua/purchase.lua with the layout a core uses for a batch of one (see
# the top of the script): KEYS meta, sold, outbox, users, codes; ARGV first
# item id minus one, '0' (no WAIT), '' (no fence: a single node), the code.
# The code names its user and its one __rand_int__ (12 digits) draws a
# prepared code (bench/prep_codes.py: `<sale>-1<i as 12 digits>-<32
# zeros>`), so every call is a prepared code's first purchase or a replay,
# the same draw as bench/purchase.lua.
# Sets RB_CMD (an array).
purchase_bench_cmd() { # db sale_id requests pipeline clients codes sha
  local db=$1 sale=$2 requests=$3 pipeline=$4 clients=$5 codes=$6 sha=$7
  local tag="{sale:$sale}"
  RB_CMD=(redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" --dbnum "$db" -c "$clients" -n "$requests"
    -r "$codes" -P "$pipeline" --precision 3
    EVALSHA "$sha" 5 "$tag:meta" "$tag:sold" "$tag:outbox" "$tag:users" "$tag:codes"
    "$((sale * 1000000))" 0 "" "${sale}-1__rand_int__-00000000000000000000000000000000")
}

# codes of the sale spent (purchased, first time), out of 0..codes-1
SPENT_LUA='local n = 0
for i = 0, tonumber(ARGV[2]) - 1 do
  if redis.call("HEXISTS", KEYS[1], string.format("%s-1%012d-00000000000000000000000000000000", ARGV[1], i)) == 1 then n = n + 1 end
end
return n'
spent_codes() { # db sale codes
  rcli -n "$1" eval "$SPENT_LUA" 1 "{sale:$2}:codes" "$2" "$3"
}

# ---------------------------------------------------------------------------
# scenarios
# ---------------------------------------------------------------------------

DB_CHECKOUT=$((REDIS_DB_BASE + 0))
DB_SELLOUT=$((REDIS_DB_BASE + 1))
DB_PURCHASE=$((REDIS_DB_BASE + 2))
DB_RB1=$((REDIS_DB_BASE + 3))
DB_RB16=$((REDIS_DB_BASE + 4))
DB_MIXED=$((REDIS_DB_BASE + 5))
DB_K6=$((REDIS_DB_BASE + 6))

wrk_cmd() { # script, env assignments...  -> WRK_CMD
  local script=$1
  shift
  WRK_CMD=(env COUNT_STATUS=1 USERS="$USERS" "$@" "${WRK[@]}" -t"$THREADS" -c"$CONNECTIONS"
    -d"$DURATION" --latency -s "bench/$script" "$URL")
}

scenario_ceiling() {
  local kvf out
  kvf="$(new_kv "$ROUND" ceiling wrk)"
  out="$OUT/raw/r$ROUND-ceiling.txt"
  local url="http://127.0.0.1:$BARE_PORT"
  log "round $ROUND: ceiling (bare responder, $SERVER_CORES thread(s))"
  measure "$kvf" "$out" "$BARE_PID" -- env COUNT_STATUS=1 USERS="$USERS" SALE_ID=1 ITEMS="$SALE_ITEMS" \
    "${WRK[@]}" -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s bench/checkout.lua "$url"
  show_wrk ceiling "$out"
}

scenario_checkout() {
  local kvf out drain_ms="" t0 depth rows answered i
  start_server checkout "$DB_CHECKOUT" $((DURATION_S + DRAIN_TIMEOUT + 30))
  kvf="$(new_kv "$ROUND" checkout wrk)"
  out="$OUT/raw/r$ROUND-checkout.txt"
  log "round $ROUND: checkout crowd (sale $SALE_ID, $ITEMS items)"
  wrk_cmd checkout.lua SALE_ID="$SALE_ID" ITEMS="$ITEMS"
  measure "$kvf" "$out" "$SERVER_PID" -- "${WRK_CMD[@]}"
  show_wrk checkout "$out"
  # Target 5: the writer drains, and every answered checkout is a row.
  t0="$(date +%s%N)"
  for ((i = 0; i < DRAIN_TIMEOUT * 10; i++)); do
    depth="$(metric_sum '^flashsale_writer_queue_depth ')"
    answered="$(metric_sum '^flashsale_requests_total\{route="checkout",status="(200|404|409)"\}')"
    rows="$(psql_app "$PG_DB" -c "select count(*) from checkouts where sale_id = $SALE_ID")"
    if [[ $depth == 0 && $rows == "$answered" ]]; then
      drain_ms=$((($(date +%s%N) - t0) / 1000000))
      break
    fi
    sleep 0.1
  done
  kv "$kvf" drained "$([[ -n $drain_ms ]] && echo 1 || echo 0)"
  kv "$kvf" drain_ms "${drain_ms:-NA}"
  kv "$kvf" queue_depth_after "$depth"
  kv "$kvf" checkout_rows "$rows"
  kv "$kvf" checkouts_answered "$answered"
  kv "$kvf" server_requests "$(metric_sum '^flashsale_requests_total\{route="checkout"')"
  kv "$kvf" writer_queue_full "$(metric_sum '^flashsale_writer_queue_full_total ')"
  kv "$kvf" shed "$(metric_sum '^flashsale_shed_total ')"
  kv "$kvf" s503_server "$(metric_sum '^flashsale_requests_total\{route="checkout",status="503"\}')"
  log "  writer: drained=${drain_ms:-no} ms, rows $rows / answered $answered, queue depth $depth"
  stop_server checkout
  drop_pg_db "$PG_DB"
}

scenario_sellout() {
  local kvf out idle sold
  start_server sellout "$DB_SELLOUT" $((SELLOUT_MAX + DURATION_S + 2 * DRAIN_TIMEOUT + 30))
  kvf="$(new_kv "$ROUND" sellout wrk)"
  out="$OUT/raw/r$ROUND-sellout.txt"
  log "round $ROUND: sellout (sale $SALE_ID, $ITEMS items, pick $SELLOUT_PICK, $SELLOUT_CART items per user)"
  measure "$kvf" "$out.watch" "$SERVER_PID" -- python3 bench/sellout_watch.py --url "$URL" \
    --timeout "$SELLOUT_MAX" --poll-ms "$POLL_MS" --out "$out" --trace "$out.sold" -- \
    env COUNT_STATUS=1 USERS="$USERS" SALE_ID="$SALE_ID" ITEMS="$ITEMS" PICK="$SELLOUT_PICK" CART="$SELLOUT_CART" \
    "${WRK[@]}" -t"$THREADS" -c"$CONNECTIONS" -d"${SELLOUT_MAX}s" --latency -s bench/sellout.lua "$URL"
  kv "$kvf" raw "raw/r$ROUND-sellout.txt"
  kv "$kvf" watch "raw/r$ROUND-sellout.txt.watch"
  show_wrk sellout "$out"
  log "  $(grep -m1 '^SELLOUT' "$out.watch" || echo 'no SELLOUT line')"

  # the crowd after the sellout, on the same (sold-out) sale
  idle="$(wait_writer_idle "$DRAIN_TIMEOUT")"
  sleep 0.5 # every core refreshes its known-sold map from Redis every 100 ms
  sold="$(json_field "$(curl -fsS --max-time 5 "$URL/sales/active")" items_sold)"
  kvf="$(new_kv "$ROUND" postsellout wrk)"
  out="$OUT/raw/r$ROUND-postsellout.txt"
  kv "$kvf" writer_idle_ms_before "$idle"
  kv "$kvf" items_sold_before "$sold"
  kv "$kvf" items_total "$ITEMS"
  local sold_map0
  sold_map0="$(metric_sum '^flashsale_sold_map_answers_total ')"
  log "round $ROUND: post-sellout crowd ($sold of $ITEMS sold)"
  wrk_cmd checkout.lua SALE_ID="$SALE_ID" ITEMS="$ITEMS"
  measure "$kvf" "$out" "$SERVER_PID" -- "${WRK_CMD[@]}"
  kv "$kvf" sold_map_answers $(($(metric_sum '^flashsale_sold_map_answers_total ') - sold_map0))
  show_wrk postsellout "$out"
  stop_server sellout
  drop_pg_db "$PG_DB"
}

scenario_purchase() {
  local kvf out sha_checkout sha_purchase ends_at starts_at expire_at meta resp p0 served spent sold db p
  start_server purchase "$DB_PURCHASE" $((DURATION_S + 120))
  sha_checkout="$(rcli script load "$(cat lua/checkout.lua)")"
  sha_purchase="$(rcli script load "$(cat "$PURCHASE_LUA")")"
  meta="{sale:$SALE_ID}:meta"
  starts_at="$(rcli -n "$DB_PURCHASE" hget "$meta" starts_at)"
  ends_at="$(rcli -n "$DB_PURCHASE" hget "$meta" ends_at)"
  expire_at="$(rcli -n "$DB_PURCHASE" hget "$meta" expire_at)"
  resp="$OUT/raw/codes.resp"
  log "round $ROUND: purchase path: preparing $PURCHASE_CODES codes (bench/prep_codes.py)"
  local prep=(python3 bench/prep_codes.py --sale "$SALE_ID" --items "$ITEMS" --codes "$PURCHASE_CODES"
    --max-items "$PURCHASE_MAX_ITEMS" --checkout-sha "$sha_checkout")
  log_cmd "prepared codes (piped into each database with redis-cli -n DB --pipe)" "${prep[@]}"
  "${prep[@]}" >"$resp"
  prep_db() { # db
    local r
    r="$(rcli -n "$1" --pipe <"$resp" 2>&1 | tail -n1)"
    [[ $r == *"errors: 0,"* ]] || die "preparing codes in Redis db $1 failed: $r"
  }
  prep_db "$DB_PURCHASE"

  kvf="$(new_kv "$ROUND" purchase wrk)"
  out="$OUT/raw/r$ROUND-purchase.txt"
  log "round $ROUND: purchase path (POST /purchase, $PURCHASE_CODES codes)"
  p0="$(metric_sum '^flashsale_requests_total\{route="purchase"')"
  wrk_cmd purchase.lua SALE_ID="$SALE_ID" CODES="$PURCHASE_CODES"
  measure "$kvf" "$out" "$SERVER_PID" -- "${WRK_CMD[@]}"
  served=$(($(metric_sum '^flashsale_requests_total\{route="purchase"') - p0))
  spent="$(spent_codes "$DB_PURCHASE" "$SALE_ID" "$PURCHASE_CODES")"
  sold="$(rcli -n "$DB_PURCHASE" hget "$meta" sold)"
  kv "$kvf" server_requests "$served"
  kv "$kvf" codes "$PURCHASE_CODES"
  kv "$kvf" codes_spent "$spent"
  kv "$kvf" items_sold "$sold"
  show_wrk purchase "$out"
  log "  $served purchases served: $spent first purchases of a code, $sold items sold"
  stop_server purchase
  drop_pg_db "$PG_DB"

  # Redis alone, same script, same prepared state, same number of requests
  ((served > 0)) || served=100000
  for p in 1 16; do
    if [[ $p == 1 ]]; then db=$DB_RB1; else db=$DB_RB16; fi
    rcli -n "$db" flushdb >/dev/null
    [[ " ${REDIS_DBS[*]} " == *" $db "* ]] || REDIS_DBS+=("$db")
    rcli -n "$db" hset "$meta" id "$SALE_ID" starts_at "$starts_at" ends_at "$ends_at" \
      items "$ITEMS" limit "$USER_LIMIT" sold 0 expire_at "$expire_at" >/dev/null
    prep_db "$db"
    purchase_bench_cmd "$db" "$SALE_ID" "$served" "$p" "$RB_CLIENTS" "$PURCHASE_CODES" "$sha_purchase"
    kvf="$(new_kv "$ROUND" "redis_p$p" redis-benchmark)"
    out="$OUT/raw/r$ROUND-redis_p$p.txt"
    log "round $ROUND: redis-benchmark EVALSHA purchase.lua -P $p ($served requests)"
    measure "$kvf" "$out" "" -- "${RB_CMD[@]}"
    kv "$kvf" pipeline "$p"
    kv "$kvf" requests_sent "$served"
    kv "$kvf" codes "$PURCHASE_CODES"
    kv "$kvf" codes_spent "$(spent_codes "$db" "$SALE_ID" "$PURCHASE_CODES")"
    kv "$kvf" items_sold "$(rcli -n "$db" hget "$meta" sold)"
    log "  $(grep -m1 'throughput summary' "$out" | sed 's/^ *//' || echo 'no throughput summary')"
    rcli -n "$db" flushdb >/dev/null
  done
  rcli -n "$DB_PURCHASE" flushdb >/dev/null
  rm -f "$resp"
}

scenario_mixed() {
  local kvf out
  start_server mixed "$DB_MIXED" $((DURATION_S + 60))
  kvf="$(new_kv "$ROUND" mixed wrk)"
  out="$OUT/raw/r$ROUND-mixed.txt"
  log "round $ROUND: mixed flow (browse, checkout 1..$MIXED_MAX_ITEMS items, purchase)"
  wrk_cmd mixed.lua SALE_ID="$SALE_ID" ITEMS="$ITEMS" PAGE="$MIXED_PAGE" MAX_ITEMS="$MIXED_MAX_ITEMS"
  measure "$kvf" "$out" "$SERVER_PID" -- "${WRK_CMD[@]}"
  show_wrk mixed "$out"
  stop_server mixed
  drop_pg_db "$PG_DB"
}

scenario_k6() {
  local kvf out
  start_server k6 "$DB_K6" $((K6_DURATION_S + 90))
  kvf="$(new_kv "$ROUND" k6 k6)"
  out="$OUT/raw/r$ROUND-k6.txt"
  log "round $ROUND: k6 $K6_SCRIPT at $K6_RATE/s for $K6_DURATION"
  # Rate and duration under the names k6/flash_crowd.js reads (PEAK_RPS, RAMP,
  # HOLD, TAIL) and generic ones (RATE, DURATION) for a script that reads those.
  # k6's web dashboard writes its HTML report (self-contained, opens offline)
  # at the end; no dashboard server (port -1); a 1 s period, so that a run of a
  # few seconds has data points (with the default 10 s none is written).
  measure "$kvf" "$out" "$SERVER_PID" -- env K6_WEB_DASHBOARD=true K6_WEB_DASHBOARD_PORT=-1 \
    K6_WEB_DASHBOARD_PERIOD=1s K6_WEB_DASHBOARD_EXPORT="$OUT/k6-report-r$ROUND.html" \
    SUMMARY_JSON="$out.summary.json" BASE_URL="$URL" PEAK_RPS="$K6_RATE" RATE="$K6_RATE" \
    RAMP=1s HOLD="$K6_DURATION" TAIL=1s DURATION="$K6_DURATION" USERS="$USERS" \
    "$K6_BIN" run --quiet --no-color --summary-export "$out.json" \
    --summary-trend-stats 'avg,min,med,max,p(90),p(99),p(99.9)' "$K6_SCRIPT"
  kv "$kvf" summary "raw/r$ROUND-k6.txt.json"
  kv "$kvf" report "k6-report-r$ROUND.html"
  kv "$kvf" rate "$K6_RATE"
  stop_server k6
  drop_pg_db "$PG_DB"
}

# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------

ROUND=0
if want ceiling; then
  log_cmd "ceiling server" "$BARE_BIN" "127.0.0.1:$BARE_PORT" "$SERVER_CORES"
  "$BARE_BIN" "127.0.0.1:$BARE_PORT" "$SERVER_CORES" >"$OUT/logs/bare_responder.log" 2>&1 &
  BARE_PID=$!
  for ((i = 0; i < 100; i++)); do
    curl -fsS --max-time 1 -o /dev/null "http://127.0.0.1:$BARE_PORT/" 2>/dev/null && break
    kill -0 "$BARE_PID" 2>/dev/null || die "bare_responder exited; see $OUT/logs/bare_responder.log"
    sleep 0.1
  done
fi

log "rounds: $ROUNDS; scenarios: $SCENARIOS; wrk -t$THREADS -c$CONNECTIONS -d$DURATION; server cores: $SERVER_CORES"
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
  for s in $SCENARIOS; do
    case $s in
      ceiling) scenario_ceiling ;;
      checkout) scenario_checkout ;;
      sellout) scenario_sellout ;;
      purchase) scenario_purchase ;;
      mixed) scenario_mixed ;;
      k6) if [[ $K6 == 1 ]]; then scenario_k6; fi ;;
      *) die "unknown scenario '$s' (ceiling checkout sellout purchase mixed k6)" ;;
    esac
  done
done

if [[ -n $BARE_PID ]]; then
  stop_process "$BARE_PID"
  BARE_PID=""
fi
{
  echo "finished_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)"
} >>"$OUT/meta.kv"

python3 bench/report.py "$OUT"
if [[ -z ${RESULTS_DIR:-} ]]; then
  ln -sfn "$(basename "$OUT")" "$ROOT/bench/runs/latest"
fi
log "report: ${OUT#"$ROOT"/}/report.md (chart.svg beside it)"
