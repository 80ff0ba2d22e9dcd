#!/usr/bin/env bash
# bench/cluster_compare.sh: the checkout crowd and the purchase path of two
# builds side by side on the single-node Redis, and of this tree on the Redis
# Cluster, in alternating rounds, with ratios per round and medians.
#
#   REF=main bash bench/cluster_compare.sh             # the reference: any git revision
#   REF=a8d7411 ROUNDS=5 DURATION=8s bash bench/cluster_compare.sh
#   CLUSTER=0 bash bench/cluster_compare.sh            # single node only
#
# Builds (cargo build --release) the reference REF, exported with `git
# archive` into a temporary directory, and this tree; both use this tree's
# target directory (so only the flashsale crate is built twice, not the
# dependencies) and the binaries are copied aside. Each round then runs, the
# order of ref and cur flipping every round:
#
#   single  checkout  ref, cur   wrk with bench/checkout.lua: random users of
#                                USERS, random items of the fresh sale
#   single  purchase  ref, cur   wrk with bench/purchase.lua on PURCHASE_CODES
#                                codes prepared by bench/prep_codes.py (each
#                                build's own, through its own lua/checkout.lua)
#   cluster checkout  cur        the same, on the cluster (CLUSTER_PORTS)
#   cluster purchase  cur        the same, on the cluster
#   cluster purchase  cur+wait1  the same with FLASHSALE_REDIS_WAIT_REPLICAS=1
#
# Every run gets a fresh server process, a fresh Postgres database and fresh
# Redis state: on the single node its own database (REDIS_DB, flushed before
# and after), on the cluster its own REDIS_KEY_PREFIX (its keys are deleted
# afterwards; nothing else on the cluster is touched). The cluster legs run
# when CLUSTER=1, or with CLUSTER=auto (the default) when the cluster answers
# `cluster_state:ok` and this tree has the cluster client
# (src/redis_client/cluster.rs); start the local cluster with
# `scripts/services.sh cluster-start`.
#
# Needs Redis (REDIS_PORT) and Postgres (PG_PORT, user flashsale) running, as
# scripts/services.sh starts them, and wrk. On a small shared machine the
# figures are noisy: read the ratios within a round and the medians.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

REF="${REF:-main}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-6s}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-1}"
LEGS="${LEGS:-checkout purchase}"
CLUSTER="${CLUSTER:-auto}"
CLUSTER_PORTS="${CLUSTER_PORTS:-7000 7001 7002 7003 7004 7005}"
BENCH_PORT="${BENCH_PORT:-18280}"
REDIS_PORT="${REDIS_PORT:-6379}"
REDIS_DB="${REDIS_DB:-1012}"
PG_PORT="${PG_PORT:-5432}"
PG_DB="${PG_DB:-fscluster_compare}"
SERVER_CORES="${SERVER_CORES:-$(nproc)}"
SALE_PERIOD_SECS="${SALE_PERIOD_SECS:-3600}"
USERS="${USERS:-1000000}"
PURCHASE_CODES="${PURCHASE_CODES:-50000}"
PURCHASE_MAX_ITEMS="${PURCHASE_MAX_ITEMS:-3}"
BUILD="${BUILD:-1}"
OUT="${OUT:-$(mktemp -d /tmp/cluster_compare.XXXXXX)}"
mkdir -p "$OUT"

log() { printf '[cluster_compare %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}
for v in ROUNDS CONNECTIONS THREADS BENCH_PORT REDIS_PORT REDIS_DB PG_PORT SERVER_CORES SALE_PERIOD_SECS \
  USERS PURCHASE_CODES PURCHASE_MAX_ITEMS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, not '${!v}'"
done
[[ $PG_DB =~ ^[a-z_][a-z0-9_]*$ ]] || die "PG_DB must be a plain lowercase name"
for tool in wrk redis-cli psql python3 curl git cargo; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done
DURATION_S="${DURATION%s}"
[[ $DURATION_S =~ ^[0-9]+$ ]] || die "DURATION must be whole seconds, like 6s"

rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
psql_q() { PGOPTIONS="-c client_min_messages=warning" PGCONNECT_TIMEOUT=5 psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
PG_ADMIN="postgres://flashsale@127.0.0.1:$PG_PORT/postgres"
# Drops the run's database; retried, since WITH (FORCE) refuses while a
# backend of another role (an autovacuum worker, say) is connected to it.
drop_db() {
  local i
  for ((i = 0; i < 20; i++)); do
    psql_q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  psql_q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null
}
URL="http://127.0.0.1:$BENCH_PORT"

SERVER_PID=""
PREFIX="" # the cluster run's key prefix, while its keys exist
stop_server() {
  stop_process "$SERVER_PID"
  SERVER_PID=""
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  stop_server
  [[ -n $PREFIX ]] && cluster_forget "$PREFIX"
  rcli -n "$REDIS_DB" flushdb >/dev/null 2>&1
  drop_db >/dev/null 2>&1
  rm -rf "$OUT/ref-src"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the cluster ----------------------------------------------------------------
cluster_up() {
  local p
  for p in $CLUSTER_PORTS; do
    redis-cli -p "$p" cluster info 2>/dev/null | tr -d '\r' | grep -qx 'cluster_state:ok' && return 0
  done
  return 1
}
CLUSTER_URL=""
for p in $CLUSTER_PORTS; do CLUSTER_URL+="${CLUSTER_URL:+,}redis://127.0.0.1:$p"; done
# "port" of each master, from CLUSTER NODES
cluster_masters() {
  local p
  for p in $CLUSTER_PORTS; do
    redis-cli -p "$p" cluster nodes 2>/dev/null | awk '$3 ~ /master/ && $3 !~ /fail/ { split($2, a, "[:@]"); print a[2] }' &&
      return 0
  done
}
# the port of the master that serves a key's slot
cluster_owner() { # key
  local p slot
  for p in $CLUSTER_PORTS; do
    slot="$(redis-cli -p "$p" cluster keyslot "$1" 2>/dev/null)" || continue
    [[ $slot =~ ^[0-9]+$ ]] || continue
    redis-cli -p "$p" cluster nodes | awk -v s="$slot" '$3 ~ /master/ && $3 !~ /fail/ {
      for (i = 9; i <= NF; i++) { n = split($i, r, "-"); lo = r[1]; hi = (n == 2 ? r[2] : r[1])
        if ($i !~ /^\[/ && s >= lo + 0 && s <= hi + 0) { split($2, a, "[:@]"); print a[2]; exit } } }'
    return 0
  done
}
# deletes every key that starts with the prefix, on every master: one UNLINK
# per key (a master holds several slots, and one command's keys must share
# one), pipelined
cluster_forget() { # prefix
  local port
  for port in $(cluster_masters); do
    redis-cli -p "$port" --scan --pattern "$1*" |
      LC_ALL=C awk '{ printf "*2\r\n$6\r\nUNLINK\r\n$%d\r\n%s\r\n", length($0), $0 }' |
      redis-cli -p "$port" --pipe >/dev/null
  done
}

case $CLUSTER in
  1) cluster_up || die "no cluster on $CLUSTER_PORTS (scripts/services.sh cluster-start)" ;;
  0) ;;
  auto)
    if [[ ! -f src/redis_client/cluster.rs ]]; then
      log "this tree has no cluster client (src/redis_client/cluster.rs): cluster legs skipped"
      CLUSTER=0
    elif ! cluster_up; then
      log "no cluster on ports $CLUSTER_PORTS: cluster legs skipped (scripts/services.sh cluster-start)"
      CLUSTER=0
    else
      CLUSTER=1
    fi
    ;;
  *) die "CLUSTER must be 0, 1 or auto" ;;
esac

# --- the two builds -------------------------------------------------------------
REF_REV="$(git rev-parse --verify --short "$REF^{commit}")" || die "REF=$REF is not a revision"
CUR_REV="$(git rev-parse --short HEAD)"
if [[ -n $(git status --porcelain -- src lua migrations Cargo.toml Cargo.lock) ]]; then CUR_REV+="+dirty"; fi
REF_BIN="$OUT/flashsale-ref-$REF_REV"
CUR_BIN="$OUT/flashsale-cur-$CUR_REV"
mkdir -p "$OUT/ref-src"
# -m: the files get the time of extraction, so that cargo rebuilds the crate
# whatever its target directory last held
git archive "$REF_REV" | tar -x -m -C "$OUT/ref-src"
# the reference's own scripts and code preparation, which follow its key layout
REF_LUA="$OUT/ref-lua"
rm -rf "$REF_LUA" && cp -r "$OUT/ref-src/lua" "$REF_LUA"
REF_PREP="$OUT/ref-prep_codes.py"
cp "$OUT/ref-src/bench/prep_codes.py" "$REF_PREP"
# and its wrk scripts (bench/purchase.lua draws the codes its prep_codes.py made)
REF_BENCH="$OUT/ref-bench"
rm -rf "$REF_BENCH" && cp -r "$OUT/ref-src/bench" "$REF_BENCH"
if [[ $BUILD == 1 ]]; then
  # The reference gets its own target directory (cargo decides from file
  # times whether a crate is fresh, so two source trees must not share one),
  # seeded once with this tree's release build, so that only the crate itself
  # is built, not the dependencies.
  REF_TARGET="$ROOT/target/compare-ref"
  if [[ ! -d $REF_TARGET/release && -d $ROOT/target/release ]]; then
    mkdir -p "$REF_TARGET"
    cp -a "$ROOT/target/release" "$REF_TARGET/release"
  fi
  log "building ref $REF_REV (cargo build --release in $OUT/ref-src, target dir $REF_TARGET)"
  (cd "$OUT/ref-src" && CARGO_TARGET_DIR="$REF_TARGET" cargo build --release --quiet --bin flashsale)
  cp "$REF_TARGET/release/flashsale" "$REF_BIN"
  log "building cur $CUR_REV (cargo build --release)"
  cargo build --release --quiet --bin flashsale
  cp "$ROOT/target/release/flashsale" "$CUR_BIN"
else
  # BUILD=0: REF_BIN_PATH and CUR_BIN_PATH name binaries built before; the
  # report names them, since this tree's commit need not be what they hold
  cp "${REF_BIN_PATH:?BUILD=0 needs REF_BIN_PATH}" "$REF_BIN"
  cp "${CUR_BIN_PATH:?BUILD=0 needs CUR_BIN_PATH}" "$CUR_BIN"
  REF_REV="$REF_REV($REF_BIN_PATH)" CUR_REV="$CUR_BIN_PATH"
fi
rm -rf "$OUT/ref-src"

# --- one run ----------------------------------------------------------------------

# Waits, when the current sale period ends within $1 seconds, for the next one,
# so that no run sees its sale change under it.
guard_period() { # seconds needed
  local now left
  now="$(date +%s)"
  left=$((SALE_PERIOD_SECS - now % SALE_PERIOD_SECS))
  if ((left < $1)); then
    log "the sale period ends in $left s: waiting for the next one"
    sleep $((left + 2))
  fi
}

# CPU (user + system, all threads) of a process, in clock ticks, and the pid
# listening on a port
TICK_US=$((1000000 / $(getconf CLK_TCK)))
listener_pid() { ss -ltnpH "sport = :$1" | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n1; }
REDIS_PID="$(listener_pid "$REDIS_PORT")"
[[ -n $REDIS_PID ]] || die "no process listens on $REDIS_PORT (Redis)"

RESULTS="$OUT/results.txt"
: >"$RESULTS"

# run ROUND REDIS(single|cluster) LEG(checkout|purchase) SIDE(ref|cur) WAIT(0|1)
run() {
  local round=$1 redis=$2 leg=$3 side=$4 wait=$5 bin lua prep wrk_dir label url prefix="" node active sale items ends_at \
    sha out line rps p99 p999 statuses
  if [[ $side == ref ]]; then
    bin=$REF_BIN lua=$REF_LUA prep=$REF_PREP wrk_dir=$REF_BENCH
  else
    bin=$CUR_BIN lua=$ROOT/lua prep=$ROOT/bench/prep_codes.py wrk_dir=$ROOT/bench
  fi
  label=$side
  if [[ $wait == 1 ]]; then label+="+wait1"; fi
  guard_period $((DURATION_S + 90))
  drop_db
  psql_q "$PG_ADMIN" -c "CREATE DATABASE $PG_DB" >/dev/null
  if [[ $redis == single ]]; then
    rcli -n "$REDIS_DB" flushdb >/dev/null
    url="redis://127.0.0.1:$REDIS_PORT/$REDIS_DB"
  else
    prefix="ccmp$$r$round$label-$leg:"
    PREFIX=$prefix
    url=$CLUSTER_URL
  fi
  if ss -ltnH "sport = :$BENCH_PORT" | grep -q .; then die "port $BENCH_PORT is taken: set BENCH_PORT"; fi
  local env_=(FLASHSALE_LISTEN="127.0.0.1:$BENCH_PORT" REDIS_URL="$url"
    DATABASE_URL="postgres://flashsale@127.0.0.1:$PG_PORT/$PG_DB" FLASHSALE_CORES="$SERVER_CORES"
    SALE_PERIOD_SECS="$SALE_PERIOD_SECS" FLASHSALE_LOG=warn)
  [[ -n $prefix ]] && env_+=(REDIS_KEY_PREFIX="$prefix")
  [[ $wait == 1 ]] && env_+=(FLASHSALE_REDIS_WAIT_REPLICAS=1)
  local log_file="$OUT/server-r$round-$redis-$leg-$label.log"
  echo "env ${env_[*]} $bin" >"$log_file.cmd"
  env "${env_[@]}" "$bin" >"$log_file" 2>&1 &
  SERVER_PID=$!
  if ! active="$(wait_active_sale "$URL" "$SERVER_PID")"; then
    tail -n 20 "$log_file" >&2
    die "no active sale after 60 s, or the server exited; see $log_file"
  fi
  sale="$(json_field "$active" sale_id)"
  items="$(json_field "$active" items_total)"

  local wrk_env=(COUNT_STATUS=1 USERS="$USERS" SALE_ID="$sale" ITEMS="$items")
  local script=checkout.lua
  if [[ $leg == purchase ]]; then
    # the state real checkouts leave, through this build's own checkout.lua
    local r=(rcli -n "$REDIS_DB")
    [[ $redis == cluster ]] && node="$(cluster_owner "{sale:$sale}")" && r=(redis-cli -p "$node")
    sha="$("${r[@]}" script load "$(cat "$lua/checkout.lua")")"
    ends_at="$("${r[@]}" hget "$prefix{sale:$sale}:meta" ends_at)"
    [[ $ends_at =~ ^[0-9]+$ ]] || die "no meta for sale $sale in Redis"
    local prep_cmd=(python3 "$prep" --sale "$sale" --items "$items" --codes "$PURCHASE_CODES"
      --max-items "$PURCHASE_MAX_ITEMS" --checkout-sha "$sha")
    # builds before the users hash passed the expiry of user and code keys
    if grep -q -- '--ends-at' "$prep"; then prep_cmd+=(--ends-at "$ends_at"); fi
    if [[ -n $prefix ]]; then prep_cmd+=(--key-prefix "$prefix"); fi
    "${prep_cmd[@]}" | "${r[@]}" --pipe >"$OUT/prep.txt" 2>&1
    grep -q 'errors: 0,' "$OUT/prep.txt" || die "preparing codes failed: $(tail -n 2 "$OUT/prep.txt")"
    # code 0 must hold its checkout (the users hash, or before it the code's
    # key), or the layout did not match
    [[ $("${r[@]}" hget "$prefix{sale:$sale}:users" 1000000000000) == *":$sale-1000000000000-"* ||
      $("${r[@]}" hget "$prefix{sale:$sale}:code:$sale-1-00000000000000000000000000000000" user) == 1 ]] ||
      die "the prepared codes are not in Redis (does $prep match $lua/checkout.lua?)"
    wrk_env=(COUNT_STATUS=1 SALE_ID="$sale" CODES="$PURCHASE_CODES")
    script=purchase.lua
  fi
  # the Redis process that holds the sale
  local rpid=$REDIS_PID
  if [[ $redis == cluster ]]; then rpid="$(listener_pid "$(cluster_owner "{sale:$sale}")")"; fi
  local s0 r0 s1 r1
  s0=$(cpu_ticks "$SERVER_PID") r0=$(cpu_ticks "$rpid")
  out="$OUT/wrk-r$round-$redis-$leg-$label.txt"
  env "${wrk_env[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$wrk_dir/$script" "$URL" >"$out" 2>&1 ||
    die "wrk failed: $(tail -n 3 "$out")"
  s1=$(cpu_ticks "$SERVER_PID") r1=$(cpu_ticks "$rpid")
  stop_server
  if [[ -n $prefix ]]; then
    cluster_forget "$prefix"
    PREFIX=""
  else
    rcli -n "$REDIS_DB" flushdb >/dev/null
  fi
  line="$(grep -m1 '^BENCH ' "$out")" || die "no BENCH line in $out"
  field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $line"; }
  rps="$(field rps)"
  p99="$(awk -v u="$(field lat_p99_us)" 'BEGIN { printf "%.2f", u / 1000 }')"
  p999="$(awk -v u="$(field lat_p999_us)" 'BEGIN { printf "%.2f", u / 1000 }')"
  statuses="$(tr ' ' '\n' <<<"$line" | grep -E '^s[0-9]{3}=' | tr '\n' ' ')"
  statuses+="err=$(($(field err_connect) + $(field err_read) + $(field err_write) + $(field err_timeout)))"
  local n cpu_s cpu_r
  n="$(field requests)"
  cpu_s="$(awk -v t=$((s1 - s0)) -v us="$TICK_US" -v n="$n" 'BEGIN { printf "%.1f", t * us / n }')"
  cpu_r="$(awk -v t=$((r1 - r0)) -v us="$TICK_US" -v n="$n" 'BEGIN { printf "%.1f", t * us / n }')"
  echo "$round $redis $leg $label $rps $p99 $p999 $cpu_s $cpu_r" >>"$RESULTS"
  printf '  r%-2s %-7s %-8s %-9s %9.0f req/s  p99 %6s ms  p99.9 %6s ms  CPU/req server %5s us, redis %5s us  (%s)\n' \
    "$round" "$redis" "$leg" "$label" "$rps" "$p99" "$p999" "$cpu_s" "$cpu_r" "$statuses"
}

log "ref $REF_REV, cur $CUR_REV; $ROUNDS rounds of wrk -t$THREADS -c$CONNECTIONS -d$DURATION; legs: $LEGS; cluster: $([[ $CLUSTER == 1 ]] && echo "$CLUSTER_URL" || echo no)"
log "raw outputs in $OUT"
for ((round = 1; round <= ROUNDS; round++)); do
  if ((round % 2)); then order="ref cur"; else order="cur ref"; fi
  for leg in $LEGS; do
    for side in $order; do run "$round" single "$leg" "$side" 0; done
    if [[ $CLUSTER == 1 ]]; then
      run "$round" cluster "$leg" cur 0
      if [[ $leg == purchase ]]; then run "$round" cluster purchase cur 1; fi
    fi
  done
done

echo
echo "ref $REF_REV, cur $CUR_REV; wrk -t$THREADS -c$CONNECTIONS -d$DURATION, server cores $SERVER_CORES; req/s (p99 ms)"
python3 - "$RESULTS" "$ROUNDS" <<'EOF'
import statistics
import sys

runs = {}
for line in open(sys.argv[1]):
    r, redis, leg, label, rps, p99, p999, cpu_s, cpu_r = line.split()
    runs[(redis, leg, label, int(r))] = (float(rps), float(p99), float(cpu_s) + float(cpu_r))
rounds = range(1, int(sys.argv[2]) + 1)
legs = sorted({k[1] for k in runs}, key=["checkout", "purchase"].index)


def row(title, a, b):
    """b against a, per round: req/s, p99 and CPU per request, with medians."""
    cells, ratios, p99s, cpus = [], [], [], []
    for r in rounds:
        if (*a, r) not in runs or (*b, r) not in runs:
            continue
        (ra, pa, ca), (rb, pb, cb) = runs[(*a, r)], runs[(*b, r)]
        ratios.append(rb / ra)
        p99s.append(pb / pa)
        cpus.append(cb / ca)
        cells.append(f"{ra:,.0f} ({pa}) / {rb:,.0f} ({pb}) = {rb / ra:.3f}")
    if not cells:
        return
    ma = statistics.median(runs[(*a, r)][0] for r in rounds if (*a, r) in runs)
    mb = statistics.median(runs[(*b, r)][0] for r in rounds if (*b, r) in runs)
    pa = statistics.median(runs[(*a, r)][1] for r in rounds if (*a, r) in runs)
    pb = statistics.median(runs[(*b, r)][1] for r in rounds if (*b, r) in runs)
    print(f"| {title} | {' | '.join(cells)} | {ma:,.0f} / {mb:,.0f} | **{statistics.median(ratios):.3f}** "
          f"| {pa:.2f} / {pb:.2f} = {statistics.median(p99s):.2f} | {statistics.median(cpus):.3f} |")


print(f"| comparison A / B | {' | '.join(f'round {r}' for r in rounds)} | median req/s | median req/s ratio "
      f"| median p99 ms, ratio | median CPU/req ratio |")
print(f"| --- | {' | '.join('---' for _ in rounds)} | ---: | ---: | ---: | ---: |")
for leg in legs:
    row(f"{leg}: single node, ref / cur", ("single", leg, "ref"), ("single", leg, "cur"))
for leg in legs:
    row(f"{leg}: single node / cluster (cur)", ("single", leg, "cur"), ("cluster", leg, "cur"))
row("purchase on the cluster: no WAIT / WAIT 1", ("cluster", "purchase", "cur"), ("cluster", "purchase", "cur+wait1"))
print("\n(cells: A req/s (p99 ms) / B req/s (p99 ms) = B/A; ratios are B/A, medians of the per-round ratios;"
      " CPU/req: server + the Redis process holding the sale, us per request)")
EOF
