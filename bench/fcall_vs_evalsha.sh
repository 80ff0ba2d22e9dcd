#!/usr/bin/env bash
# bench/fcall_vs_evalsha.sh: Redis Functions (FCALL) against EVALSHA for the
# hot scripts, lua/checkout.lua and lua/purchase.lua, side by side on one
# private redis-server.
#
# Each script's body is loaded twice, unchanged: with SCRIPT LOAD (called with
# EVALSHA, as the server does) and wrapped as a function library (called with
# FCALL): `#!lua name=fs_<script>` + `redis.register_function('<script>',
# function(KEYS, ARGV) <body> end)`, generated here from lua/, so the two
# sides run the same Lua. Every run starts from a fresh sale made by
# lua/init_sale.lua, and the two sides alternate (which goes first flips every
# round), so both see the same machine. Legs:
#
#   checkout  redis-benchmark, -P 16 and -P 1: a new random user (1 of 10^9)
#             checks out an item: the crowd's path (`ok`: a new field of the
#             sale's users hash, one HSET). redis-benchmark gives every
#             __rand_int__ its own number and stops at the first error reply,
#             so the item number is fixed (ITEM): a random one would sometimes
#             be 0, which the script refuses with an error.
#   lookup    redis-benchmark, -P 16 and -P 1: purchase.lua with a code of a
#             user without a checkout (`<sale>-2<12 digits>-<32 zeros>`):
#             `unknown` after reading meta, codes and users. The call's own
#             cost, where FCALL and EVALSHA differ.
#   purchase  redis-cli --pipe, one connection, every prepared code's first
#             purchase once (bench/prep_codes.py --purchase-call): `done`, 200 (bought) or 409 (~20 codes share
#             each item, so most lose). calls/s = CODES / wall time.
#   replay    the same stream again: `replay` of each stored outcome.
#
# Replies of each path are shown once before the rounds (redis-cli), and
# after each run what it did (keys created, items sold).
#
#   bash bench/fcall_vs_evalsha.sh
#   ROUNDS=2 REQUESTS=50000 bash bench/fcall_vs_evalsha.sh      # quick look
#
# Knobs: ROUNDS (6), PIPELINES ("16 1"), REQUESTS (200000, redis-benchmark
# requests at -P 16; REQUESTS_P1 (60000) at -P 1), CLIENTS (50), CODES
# (50000), LEGS ("checkout lookup purchase replay"), AOF (1: appendonly
# everysec as scripts/services.sh ships it; 0: off), REDIS_PORT (the first
# free port from 6390 up, outside 6379 and 7000-7005).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

ROUNDS=${ROUNDS:-6}
PIPELINES=${PIPELINES:-16 1}
REQUESTS=${REQUESTS:-200000}
REQUESTS_P1=${REQUESTS_P1:-60000}
CLIENTS=${CLIENTS:-50}
CODES=${CODES:-50000}
LEGS=${LEGS:-checkout lookup purchase replay}
AOF=${AOF:-1}
ITEM=${ITEM:-1}
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
for tool in redis-server redis-cli redis-benchmark python3; do
  command -v "$tool" >/dev/null || die "$tool is missing (scripts/services.sh install puts Redis in place)"
done

REDIS_PORT=${REDIS_PORT:-$(free_redis_port)} || die "no free port from 6390 up"
port_listening "$REDIS_PORT" && die "port $REDIS_PORT is taken"

WORK="$(mktemp -d /tmp/fcall-vs-evalsha.XXXXXX)"
REDIS_PID=""
cleanup() {
  stop_process "$REDIS_PID"
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the private redis-server -------------------------------------------------
private_redis_start "$WORK" "$REDIS_PORT" "$AOF" || die "no private redis-server"
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }
log "private $(redis-server --version | cut -d' ' -f3) on port $REDIS_PORT (pid $REDIS_PID), AOF=$AOF"

# --- the scripts, both ways ---------------------------------------------------
library() { # script: its body as a function library of one function of the same name
  echo "#!lua name=fs_$1"
  echo "redis.register_function('$1', function(KEYS, ARGV)"
  sed '1{/^#!lua/d}' "lua/$1.lua"
  echo "end)"
}
SHA_INIT="$(rcli script load "$(cat lua/init_sale.lua)")"
declare -A CALL
for s in checkout purchase; do
  library "$s" >"$WORK/$s.library.lua"
  rcli -x function load replace <"$WORK/$s.library.lua" >/dev/null
  CALL[evalsha_$s]="EVALSHA $(rcli script load "$(cat "lua/$s.lua")")"
  CALL[fcall_$s]="FCALL $s"
done

META="$TAG:meta"
NOW="$(rcli time | head -n1)"
STARTS_AT=$((NOW - 60))
ENDS_AT=$((NOW + 6 * 3600))
EXPIRE_AT=$((ENDS_AT * 1000 + 86400000))

# A fresh sale (what lua/init_sale.lua makes of a new sale) with, for the
# purchase legs, the prepared checkouts of CODES codes.
PREP="$WORK/checkouts.resp"
python3 bench/prep_codes.py --sale "$SALE" --items "$ITEMS" --codes "$CODES" \
  --checkout-sha "${CALL[evalsha_checkout]#EVALSHA }" >"$PREP"
for side in evalsha fcall; do
  python3 bench/prep_codes.py --sale "$SALE" --items "$ITEMS" --codes "$CODES" --checkout-sha - \
    --purchase-call "${CALL[${side}_purchase]}" >"$WORK/purchases.$side.resp"
done
pipe() { # file: pipes it, checks that nothing failed
  local r
  r="$(rcli --pipe <"$1" 2>&1 | tail -n1)"
  [[ $r == *"errors: 0,"* ]] || die "redis-cli --pipe $1: $r"
}
fresh_sale() { # with_codes (0/1)
  rcli flushall sync >/dev/null
  if [[ $AOF == 1 ]]; then # keep the log small: rewrite the (almost empty) dataset
    rcli bgrewriteaof >/dev/null 2>&1 || true
    while [[ $(rcli info persistence | tr -d '\r' | grep -c '^aof_rewrite_in_progress:1') == 1 ]]; do sleep 0.1; done
  fi
  [[ $(rcli evalsha "$SHA_INIT" 5 "$META" "$TAG:sold" "$TAG:users" "$TAG:codes" "$TAG:outbox" "$SALE" "$STARTS_AT" \
    "$ENDS_AT" "$ITEMS" "$LIMIT" "$EXPIRE_AT" create "" 0 | head -n1) == created ]] ||
    die "init_sale.lua did not create the sale"
  if [[ $1 == 1 ]]; then pipe "$PREP"; fi
}

# The call of each redis-benchmark leg, after EVALSHA <sha> / FCALL <name>.
# The layout of a core's call with a batch of one on a single node (see the
# top of each script): no WAIT ('0'), no fence ('').
checkout_args=(3 "$META" "$TAG:sold" "$TAG:users" "" __rand_int__ "$((ITEM - 1))"
  "0:1:$SALE-__rand_int__-00000000000000000000__rand_int__:,$((BASE + ITEM)),")
lookup_args=(5 "$META" "$TAG:sold" "$TAG:outbox" "$TAG:users" "$TAG:codes" "$BASE" 0 ""
  "$SALE-2__rand_int__-00000000000000000000000000000000")

# --- the path each leg exercises ----------------------------------------------
show() { # label, command...
  printf '  %-34s -> %s\n' "$1" "$(rcli "${@:2}" | tr '\n' ' ')"
}
fresh_sale 1
echo "Replies (one call of each leg, on a fresh sale with $CODES prepared codes):"
for side in evalsha fcall; do
  # shellcheck disable=SC2206 # "EVALSHA <sha>" / "FCALL <name>": two words
  c=(${CALL[${side}_checkout]})
  u=$([[ $side == evalsha ]] && echo 900000000001 || echo 900000000002)
  show "$side checkout (new user $u)" "${c[@]}" 3 "$META" "$TAG:sold" "$TAG:users" "" "$u" "$((ITEM - 1))" \
    "0:1:$SALE-$u-00000000000000000000000000000000:,$((BASE + ITEM)),"
  # shellcheck disable=SC2206
  c=(${CALL[${side}_purchase]})
  show "$side lookup (user 2, no checkout)" "${c[@]}" 5 "$META" "$TAG:sold" "$TAG:outbox" "$TAG:users" \
    "$TAG:codes" "$BASE" 0 "" "$SALE-2-00000000000000000000000000000000"
done
purchase_call() { # side label code
  # shellcheck disable=SC2206
  local c=(${CALL[${1}_purchase]})
  show "$1 $2" "${c[@]}" 5 "$META" "$TAG:sold" "$TAG:outbox" "$TAG:users" "$TAG:codes" "$BASE" 0 "" "$3"
}
code1="$SALE-1000000000000-00000000000000000000000000000000"
code2="$SALE-1000000000001-00000000000000000000000000000000"
purchase_call evalsha "purchase (code 0)" "$code1"
purchase_call fcall "purchase (code 1)" "$code2"
purchase_call fcall "replay (code 0)" "$code1"
purchase_call evalsha "replay (code 1)" "$code2"
echo

# --- the runs -------------------------------------------------------------------
RESULTS="$WORK/results"
: >"$RESULTS"
record() { echo "$*" >>"$RESULTS"; }

# Redis's CPU time (user + system, all its threads, from /proc), in clock
# ticks: per call, what a run cost Redis whatever else ran on the machine.
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# Redis's own time per call of the script command (INFO commandstats, since
# the last CONFIG RESETSTAT): the time inside Redis, which the load
# generator's share of the machine does not move.
usec_per_call() {
  rcli info commandstats | tr -d '\r' | grep -E '^cmdstat_(evalsha|fcall):' |
    sed -n 's/.*usec_per_call=\([0-9.]*\).*/\1/p' | head -n1
}

cpu_per_call() { # ticks_before calls
  awk -v t=$(($(cpu_ticks "$REDIS_PID") - $1)) -v us="$TICK_US" -v n="$2" 'BEGIN { printf "%.2f", t * us / n }'
}

bench_run() { # round leg pipeline side
  local round=$1 leg=$2 p=$3 side=$4 n csv rps p50 p99 usec cpu ticks args t0 t1 ms detail
  case $leg in
    checkout | lookup)
      n=$([[ $p == 1 ]] && echo "$REQUESTS_P1" || echo "$REQUESTS")
      fresh_sale "$([[ $leg == lookup ]] && echo 1 || echo 0)"
      if [[ $leg == checkout ]]; then
        args=("${checkout_args[@]}")
        # shellcheck disable=SC2206
        c=(${CALL[${side}_checkout]})
      else
        args=("${lookup_args[@]}")
        # shellcheck disable=SC2206
        c=(${CALL[${side}_purchase]})
      fi
      local r=1000000000
      [[ $leg == lookup ]] && r=$CODES
      rcli config resetstat >/dev/null
      ticks=$(cpu_ticks "$REDIS_PID")
      csv="$(redis-benchmark -p "$REDIS_PORT" -c "$CLIENTS" -n "$n" -r "$r" -P "$p" --precision 3 --csv \
        "${c[@]}" "${args[@]}" 2>&1 | tail -n1)"
      rps="$(echo "$csv" | awk -F'","' '{print $2}')"
      p50="$(echo "$csv" | awk -F'","' '{print $5}')"
      p99="$(echo "$csv" | awk -F'","' '{print $7}')"
      [[ $rps =~ ^[0-9.]+$ ]] || die "redis-benchmark: $csv"
      usec="$(usec_per_call)"
      cpu=$(cpu_per_call "$ticks" "$n")
      if [[ $leg == checkout ]]; then
        detail="keys $(rcli dbsize), users $(rcli hlen "$TAG:users")"
      else
        detail="keys $(rcli dbsize), sold $(rcli hget "$META" sold)"
      fi
      ;;
    purchase | replay)
      p=pipe
      n=$CODES
      fresh_sale 1
      if [[ $leg == replay ]]; then pipe "$WORK/purchases.$side.resp"; fi
      rcli config resetstat >/dev/null
      ticks=$(cpu_ticks "$REDIS_PID")
      t0="$(date +%s%N)"
      pipe "$WORK/purchases.$side.resp"
      t1="$(date +%s%N)"
      usec="$(usec_per_call)"
      cpu=$(cpu_per_call "$ticks" "$n")
      ms=$(((t1 - t0) / 1000000))
      rps="$(awk -v n="$n" -v ns=$((t1 - t0)) 'BEGIN { printf "%.1f", n / (ns / 1e9) }')"
      p50=NA
      p99=NA
      detail="$n calls in $ms ms, sold $(rcli hget "$META" sold), outbox $(rcli xlen "$TAG:outbox")"
      ;;
  esac
  record "$round $leg $p $side $rps $usec $cpu $p50 $p99"
  printf '  r%-2s %-8s %-5s %-7s %10s calls/s %7s us/call %6s us CPU/call  p50 %-6s p99 %-6s (%s)\n' \
    "$round" "$leg" "$p" "$side" "$rps" "$usec" "$cpu" "$p50" "$p99" "$detail"
}

pipelines_of() { # leg
  case $1 in
    checkout | lookup) echo "$PIPELINES" ;;
    *) echo pipe ;;
  esac
}

log "rounds $ROUNDS, legs: $LEGS; redis-benchmark -c $CLIENTS, -n $REQUESTS (-P 1: $REQUESTS_P1); $CODES codes"
echo "Runs (the load generator, redis-cli or redis-benchmark, shares the machine with Redis):"
for ((round = 1; round <= ROUNDS; round++)); do
  if ((round % 2)); then order="evalsha fcall"; else order="fcall evalsha"; fi
  for leg in $LEGS; do
    for p in $(pipelines_of "$leg"); do
      for side in $order; do
        bench_run "$round" "$leg" "$p" "$side"
      done
    done
  done
done

echo
echo "FCALL against EVALSHA per round, and medians:"
python3 - "$RESULTS" "$ROUNDS" <<'EOF'
import statistics
import sys

rows = [line.split() for line in open(sys.argv[1])]
rounds = int(sys.argv[2])
runs = {}
for r, leg, p, side, rps, usec, cpu, *_ in rows:
    runs.setdefault((leg, p), {}).setdefault(int(r), {})[side] = (float(rps), float(usec), float(cpu))


def table(title, k, fmt):
    print(title)
    print(f"| leg | pipeline | {' | '.join(f'round {r}' for r in range(1, rounds + 1))} | median EVALSHA | median FCALL | median ratio |")
    print(f"| --- | --- | {' | '.join('---' for _ in range(rounds))} | ---: | ---: | ---: |")
    for (leg, p), by_round in runs.items():
        cells, ratios = [], []
        for r in range(1, rounds + 1):
            e, f = by_round[r]["evalsha"][k], by_round[r]["fcall"][k]
            ratios.append(f / e)
            cells.append(f"{e:{fmt}} / {f:{fmt}} = {f / e:.3f}")
        me = statistics.median(x["evalsha"][k] for x in by_round.values())
        mf = statistics.median(x["fcall"][k] for x in by_round.values())
        label = "--pipe" if p == "pipe" else f"-P {p}"
        print(f"| {leg} | {label} | {' | '.join(cells)} | {me:{fmt}} | {mf:{fmt}} | **{statistics.median(ratios):.3f}** |")
    print()


table("calls/s, EVALSHA / FCALL = FCALL/EVALSHA (above 1: FCALL faster)", 0, ",.0f")
table("Redis's CPU time per call (us, /proc), EVALSHA / FCALL = FCALL/EVALSHA (below 1: FCALL cheaper)", 2, ".2f")
table("Redis's time per call (us, INFO commandstats), EVALSHA / FCALL = FCALL/EVALSHA (below 1: FCALL cheaper)", 1, ".2f")
EOF
