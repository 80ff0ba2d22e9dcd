#!/usr/bin/env bash
# bench/redis_layout_compare.sh: what Redis spends per checkout with the
# sale's users in one hash (lua/checkout.lua of this tree) against the
# layout before it (one key per user and one per code; lua/ of REF, by
# default the commit before the users/codes hashes), side by side on one
# private redis-server with the shipped durability settings (AOF everysec,
# lazyfree-lazy-expire).
#
# Each run starts from a fresh sale made by that side's lua/init_sale.lua,
# then redis-benchmark sends EVALSHA checkout.lua with batches of BATCH calls
# (the shape a busy core sends), each call a random user of ~10^6 (two
# __rand_int__ side by side: redis-benchmark gives each its own number, -r
# 1000) and a random item of 1000 (`__rand_int__1`: 1, 11, ..., 9991, never 0,
# which the script refuses), so nearly every call is a new user's first
# checkout, the crowd's path. The two sides alternate, which goes first
# flips every round. Per checkout, for each run:
#   cpu_us     Redis's CPU time (user + system, all its threads, /proc)
#   calls      commands the script ran (INFO commandstats, every command but
#              EVALSHA, since CONFIG RESETSTAT)
#   aof_bytes  growth of the AOF (INFO persistence aof_current_size)
#   req_bytes  bytes of the EVALSHA request (RESP), per call of the batch
# plus checkouts/s (redis-benchmark's, x BATCH; the load generator shares
# the machine) and the keys and users the run left.
#
#   bash bench/redis_layout_compare.sh
#   ROUNDS=2 REQUESTS=5000 bash bench/redis_layout_compare.sh     # quick look
#
# Knobs: ROUNDS (6), REQUESTS (20000 EVALSHA per run), BATCH (16), CLIENTS
# (8), REF (git revision of the old scripts; default: the newest commit whose
# lua/checkout.lua still declares user keys), REDIS_PORT (first free from
# 6390 up).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

ROUNDS=${ROUNDS:-6}
REQUESTS=${REQUESTS:-20000}
BATCH=${BATCH:-16}
CLIENTS=${CLIENTS:-8}
SALE=1
ITEMS=10000
LIMIT=10
TAG="{sale:$SALE}"
BASE=$((SALE * 1000000))

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}
for tool in redis-server redis-cli redis-benchmark python3 git; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done
if [[ -z ${REF:-} ]]; then
  REF="$(git log --format=%H -S'{sale:S}:user:U' -n1 -- lua/checkout.lua)"
  [[ -n $REF ]] || die "no commit with the old layout found; set REF"
  # -S finds the commit that removed it: the old scripts are its parent's.
  REF="$REF~1"
fi
REF_SHORT="$(git rev-parse --short "$REF")"

REDIS_PORT=${REDIS_PORT:-$(free_redis_port)} || die "no free port from 6390 up"
port_listening "$REDIS_PORT" && die "port $REDIS_PORT is taken"

WORK="$(mktemp -d /tmp/redis-layout-compare.XXXXXX)"
REDIS_PID=""
cleanup() {
  stop_process "$REDIS_PID"
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

private_redis_start "$WORK" "$REDIS_PORT" || die "no private redis-server"
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }
log "private $(redis-server --version | cut -d' ' -f3) on port $REDIS_PORT (pid $REDIS_PID); old scripts from $REF_SHORT"

for s in checkout init_sale; do
  git show "$REF:lua/$s.lua" >"$WORK/old_$s.lua"
  cp "lua/$s.lua" "$WORK/new_$s.lua"
done
declare -A SHA
for side in old new; do
  for s in checkout init_sale; do
    SHA[${side}_$s]="$(rcli script load "$(cat "$WORK/${side}_$s.lua")")"
  done
done

NOW="$(rcli time | head -n1)"
STARTS_AT=$((NOW - 60))
ENDS_AT=$((NOW + 6 * 3600))
EXPIRE_AT=$((ENDS_AT * 1000 + 86400000))

fresh_sale() { # side
  rcli flushall sync >/dev/null
  rcli bgrewriteaof >/dev/null 2>&1 || true
  sleep 0.2
  while rcli info persistence | tr -d '\r' | grep -q '^aof_rewrite_in_progress:1'; do sleep 0.1; done
  local r
  if [[ $1 == old ]]; then
    r="$(rcli evalsha "${SHA[old_init_sale]}" 2 "$TAG:meta" "$TAG:sold" "$SALE" "$STARTS_AT" "$ENDS_AT" \
      "$ITEMS" "$LIMIT" "$EXPIRE_AT" "" create 0 | head -n1)"
  else
    r="$(rcli evalsha "${SHA[new_init_sale]}" 5 "$TAG:meta" "$TAG:sold" "$TAG:users" "$TAG:codes" "$TAG:outbox" "$SALE" \
      "$STARTS_AT" "$ENDS_AT" "$ITEMS" "$LIMIT" "$EXPIRE_AT" create "" 0 | head -n1)"
  fi
  [[ $r == created ]] || die "$1 init_sale.lua: $r"
}

# One EVALSHA of BATCH checkouts, as a core sends it (single node: no fence).
user='__rand_int____rand_int__'
item='__rand_int__1'
code() { echo "$SALE-$user-00000000000000000000__rand_int__"; }
old_cmd=(EVALSHA "${SHA[old_checkout]}" $((2 + 2 * BATCH)) "$TAG:meta" "$TAG:sold")
for ((i = 0; i < BATCH; i++)); do old_cmd+=("$TAG:user:$user" "$TAG:code:$(code)"); done
old_cmd+=("$EXPIRE_AT" "$BASE" "$TAG:user:" "$TAG:code:" "")
for ((i = 0; i < BATCH; i++)); do old_cmd+=("$item"); done
# This tree's checkout.lua takes each call's bit and a new user's entry as
# text (the item id: 12 random digits after the sale id; the script stores
# the entry as is). The bit is item 1's: BITFIELD refuses an offset with
# leading zeros, which __rand_int__ has (the bits of a fresh sale are all 0).
new_cmd=(EVALSHA "${SHA[new_checkout]}" 3 "$TAG:meta" "$TAG:sold" "$TAG:users" "")
for ((i = 0; i < BATCH; i++)); do new_cmd+=("$user" 0 "0:1:$(code):,${SALE}__rand_int__,"); done

# RESP size of a command once redis-benchmark filled its placeholders (each
# __rand_int__ becomes 12 digits, as long as the placeholder).
resp_bytes() {
  python3 -c '
import sys
args = sys.argv[1:]
n = len(b"*%d\r\n" % len(args))
for a in args:
    b = a.encode()
    n += len(b"$%d\r\n" % len(b)) + len(b) + 2
print(n)' "$@"
}
declare -A REQ
REQ[old]=$(resp_bytes "${old_cmd[@]}")
REQ[new]=$(resp_bytes "${new_cmd[@]}")

echo "One call of each side (user 7, item 1) on a fresh sale:"
fresh_sale old
printf '  old -> %s\n' "$(rcli evalsha "${SHA[old_checkout]}" 4 "$TAG:meta" "$TAG:sold" "$TAG:user:7" \
  "$TAG:code:$SALE-7-x" "$EXPIRE_AT" "$BASE" "$TAG:user:" "$TAG:code:" "" 1 | tr '\n' ' ')"
fresh_sale new
printf '  new -> %s\n' "$(rcli evalsha "${SHA[new_checkout]}" 3 "$TAG:meta" "$TAG:sold" "$TAG:users" \
  "" 7 0 "0:1:$SALE-7-x:,$((BASE + 1))," | tr '\n' ' ')"
echo

TICK_US=$((1000000 / $(getconf CLK_TCK)))
aof_size() { rcli info persistence | tr -d '\r' | sed -n 's/^aof_current_size://p'; }
script_calls() { # commands run by scripts since the last RESETSTAT
  rcli info commandstats | tr -d '\r' | grep '^cmdstat_' | grep -v '^cmdstat_evalsha:' |
    grep -v '^cmdstat_config' | grep -v '^cmdstat_info' |
    sed -n 's/^cmdstat_[^:]*:calls=\([0-9]*\),.*/\1/p' | awk '{ s += $1 } END { print s + 0 }'
}

RESULTS="$WORK/results"
: >"$RESULTS"
run() { # round side
  local round=$1 side=$2 ticks aof0 csv rps calls n cpu aof left
  fresh_sale "$side"
  local -n cmd="${side}_cmd"
  aof0=$(aof_size)
  rcli config resetstat >/dev/null
  ticks=$(cpu_ticks "$REDIS_PID")
  csv="$(redis-benchmark -p "$REDIS_PORT" -c "$CLIENTS" -n "$REQUESTS" -r 1000 -P 1 --csv "${cmd[@]}" 2>&1 | tail -n1)"
  cpu=$(($(cpu_ticks "$REDIS_PID") - ticks))
  calls=$(script_calls)
  sleep 1.2 # the AOF's everysec write
  aof=$(($(aof_size) - aof0))
  rps="$(echo "$csv" | awk -F'","' '{print $2}')"
  [[ $rps =~ ^[0-9.]+$ ]] || die "redis-benchmark: $csv"
  n=$((REQUESTS * BATCH))
  if [[ $side == old ]]; then
    left="keys $(rcli dbsize)"
  else
    left="keys $(rcli dbsize), users $(($(rcli hlen "$TAG:users") - 1)), users ttl $(rcli pttl "$TAG:users") ms"
  fi
  awk -v r="$round" -v s="$side" -v rps="$rps" -v b="$BATCH" -v t="$cpu" -v us="$TICK_US" -v n="$n" \
    -v c="$calls" -v a="$aof" -v q="${REQ[$side]}" -v left="$left" 'BEGIN {
      printf "%s %s %.0f %.2f %.2f %.1f %.1f\n", r, s, rps * b, t * us / n, c / n, a / n, q / b >> "'"$RESULTS"'"
      printf "  r%-2s %-3s %9.0f checkouts/s %6.2f us CPU %5.2f calls %6.1f AOF bytes %6.1f request bytes per checkout (%s)\n",
        r, s, rps * b, t * us / n, c / n, a / n, q / b, left
    }'
}

log "rounds $ROUNDS; redis-benchmark -c $CLIENTS -n $REQUESTS, $BATCH checkouts per EVALSHA"
echo "Runs (per checkout; the load generator shares the machine with Redis):"
for ((round = 1; round <= ROUNDS; round++)); do
  if ((round % 2)); then order="old new"; else order="new old"; fi
  for side in $order; do run "$round" "$side"; done
done

echo
echo "new / old per round, and medians:"
python3 - "$RESULTS" "$ROUNDS" <<'EOF'
import statistics
import sys

rows = [line.split() for line in open(sys.argv[1])]
rounds = int(sys.argv[2])
by = {}
for r, side, *vals in rows:
    by.setdefault(int(r), {})[side] = [float(v) for v in vals]
names = ["checkouts/s", "Redis CPU us/checkout", "redis.calls/checkout", "AOF bytes/checkout",
         "request bytes/checkout"]
print(f"| per checkout | {' | '.join(f'round {r}' for r in range(1, rounds + 1))} | median old | median new | median new/old |")
print(f"| --- | {' | '.join('---' for _ in range(rounds))} | ---: | ---: | ---: |")
for k, name in enumerate(names):
    cells, ratios = [], []
    for r in range(1, rounds + 1):
        o, n = by[r]["old"][k], by[r]["new"][k]
        ratios.append(n / o)
        cells.append(f"{o:,.2f} / {n:,.2f}")
    mo = statistics.median(by[r]["old"][k] for r in by)
    mn = statistics.median(by[r]["new"][k] for r in by)
    print(f"| {name} | {' | '.join(cells)} | {mo:,.2f} | {mn:,.2f} | **{statistics.median(ratios):.3f}** |")
EOF
