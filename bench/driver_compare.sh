#!/usr/bin/env bash
# The cores' IO driver, io_uring against epoll (FLASHSALE_DRIVER), side by side
# in one run: two flashsale servers, one per driver, on the same Redis and
# Postgres (they cooperate: one sale, shared state), measured in turn on
#   GET /nope        404 from the HTTP layer (bench/notfound.lua)
#   POST /checkout   random user, random item of the active sale (bench/checkout.lua)
# alternating the drivers (the order flips every run, so neither always goes
# second), each measurement `wrk -t1 -cCONNS -dDURATION --latency`.
#
# For each measurement it reports requests/s, p50, p99, the server's CPU per
# request (user and system, from /proc/PID/stat before and after: this does
# not depend on wrk keeping up, so it is the steadier figure on a busy
# machine), the CPU per request of Redis and of this database's Postgres
# backends ("services"), and the CPU that anything else used meanwhile
# ("other", % of all CPUs, steal included). A measurement with other above
# MAX_OTHER % is printed, discarded and repeated (up to MAX_ATTEMPTS times;
# the last one is kept). It also checks that every request the server counted
# (GET /metrics) came from wrk, so no stray client skews the CPU figures.
#
# Usage (from anywhere; the servers need Redis and Postgres):
#   REDIS_URL=redis://127.0.0.1:6379/0 DATABASE_URL=postgres://flashsale@127.0.0.1:5432/flashsale \
#     bench/driver_compare.sh
#   RUNS=3 DURATION=8s CONNS=64 CORES=1 WRK_CPU=1 URING_PORT=8093 EPOLL_PORT=8094
#   QUIET_WAIT=120: before each measurement, wait up to this many seconds for
#   the machine to be idle (< 10% busy over 1 s), since its CPUs are shared.
#   MAX_OTHER=10 MAX_ATTEMPTS=3: see above.
# CORES=1 (the default) pins the server's one core thread to CPU 0 and wrk
# goes on CPU 1; Redis and Postgres float.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
BIN=${BIN:-target/release/flashsale}
RUNS=${RUNS:-3}
DURATION=${DURATION:-8s}
CONNS=${CONNS:-64}
CORES=${CORES:-1}
WRK_CPU=${WRK_CPU:-1}
URING_PORT=${URING_PORT:-8093}
EPOLL_PORT=${EPOLL_PORT:-8094}
QUIET_WAIT=${QUIET_WAIT:-120}
MAX_OTHER=${MAX_OTHER:-10}
MAX_ATTEMPTS=${MAX_ATTEMPTS:-3}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/driver-compare.XXXXXX)}
: "${REDIS_URL:?set REDIS_URL}" "${DATABASE_URL:?set DATABASE_URL}"
mkdir -p "$OUT_DIR"
[[ -x $BIN ]] || { echo "missing $BIN (cargo build --release)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk not found: scripts/bench-tools.sh" >&2; exit 1; }

for port in "$URING_PORT" "$EPOLL_PORT"; do
    if ss -ltnH "sport = :$port" | grep -q .; then
        echo "port $port is already in use" >&2
        exit 1
    fi
done

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

start_server() { # driver port -> pid
    FLASHSALE_DRIVER=$1 FLASHSALE_LISTEN=127.0.0.1:$2 FLASHSALE_CORES=$CORES FLASHSALE_LOG=info \
        "$BIN" >"$OUT_DIR/server.$1.log" 2>&1 &
    PIDS+=("$!")
    wait_active_sale "http://127.0.0.1:$2" "${PIDS[-1]}" >/dev/null && return 0
    echo "the $1 server did not come up; see $OUT_DIR/server.$1.log" >&2
    exit 1
}
start_server io-uring "$URING_PORT"
URING_PID=${PIDS[-1]}
start_server epoll "$EPOLL_PORT"
EPOLL_PID=${PIDS[-1]}
grep -h "core IO driver" "$OUT_DIR"/server.*.log | sed 's/^/  /'

active_sale() { # -> sale id and items of the active sale (it changes on the hour)
    curl -fs "http://127.0.0.1:$URING_PORT/sales/active" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["sale_id"], d["items_total"])'
}
echo "== $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); active sale and items: $(active_sale)"
echo "io_uring: pid $URING_PID on :$URING_PORT; epoll: pid $EPOLL_PID on :$EPOLL_PORT; cores $CORES; wrk on CPU $WRK_CPU"

HZ=$(getconf CLK_TCK)
# busy and total jiffies of all CPUs (busy includes irq, softirq and steal)
cpu_jiffies() { awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
proc_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
# Redis and the Postgres backends of this database: the services a checkout uses.
REDIS_PID=$(redis-cli -u "$REDIS_URL" info server | tr -d '\r' | awk -F: '/^process_id:/ {print $2}')
PG_DB=${DATABASE_URL##*/}
PG_DB=${PG_DB%%\?*}
services_ticks() { # user + system ticks of Redis and the database's backends
    local pid total=0
    for pid in "$REDIS_PID" $(pgrep -f "^postgres: [^ ]+ $PG_DB " || true); do
        [[ -r /proc/$pid/stat ]] && total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}
wait_quiet() {
    local b0 t0 b1 t1
    for _ in $(seq 1 "$QUIET_WAIT"); do
        read -r b0 t0 < <(cpu_jiffies)
        sleep 1
        read -r b1 t1 < <(cpu_jiffies)
        (((b1 - b0) * 100 < 10 * (t1 - t0))) && return 0
    done
    echo "   (machine still busy after ${QUIET_WAIT}s; measuring anyway)"
}
served() { # requests the server has counted (all), and its checkouts answered 200
    curl -fs "http://127.0.0.1:$1/metrics" | awk '/^flashsale_requests_total/ {n += $NF}
        /^flashsale_requests_total\{route="checkout",status="200"\}/ {ok = $NF} END {print n + 0, ok + 0}'
}
to_us() { # wrk latency text (412.00us, 1.02ms, 1.10s) -> microseconds
    awk -v v="$1" 'BEGIN { n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        f = (u == "us") ? 1 : (u == "ms") ? 1000 : (u == "s") ? 1000000 : 0; printf "%.0f", n * f }'
}

run_wrk() { # path port duration
    local script=notfound.lua sale_id=0 items=0
    if [[ $1 == checkout ]]; then
        script=checkout.lua
        # measure reads it before each load (the sale changes on the hour),
        # before its first /metrics scrape so the read is not taken for a stray.
        sale_id=${SALE_NOW:-0} items=${ITEMS_NOW:-0}
    fi
    SALE_ID=$sale_id ITEMS=$items taskset -c "$WRK_CPU" \
        wrk -t1 -c"$CONNS" -d"$3" --latency -s "bench/$script" "http://127.0.0.1:$2"
}

RESULTS=$OUT_DIR/results.tsv
printf 'run\tpath\tdriver\treq_s\tp50_us\tp99_us\tuser_us_per_req\tsys_us_per_req\tservices_us_per_req\tother_cpu_pct\tstray_requests\tcheckout_200_pct\n' >"$RESULTS"

measure() { # run path driver attempt; sets OTHER
    local port=$URING_PORT pid=$URING_PID out b0 t0 b1 t1 u0 s0 u1 s1 v0 v1 n0 n1 ok0 ok1 wu ws
    if [[ $3 == epoll ]]; then port=$EPOLL_PORT pid=$EPOLL_PID; fi
    out=$OUT_DIR/wrk.$1.$2.$3.$4.txt
    wait_quiet
    read -r SALE_NOW ITEMS_NOW < <(active_sale)
    read -r n0 ok0 < <(served "$port")
    v0=$(services_ticks)
    read -r b0 t0 < <(cpu_jiffies)
    read -r u0 s0 < <(proc_ticks "$pid")
    { time run_wrk "$2" "$port" "$DURATION" >"$out"; } 2>"$OUT_DIR/time.txt"
    read -r u1 s1 < <(proc_ticks "$pid")
    read -r b1 t1 < <(cpu_jiffies)
    v1=$(services_ticks)
    read -r n1 ok1 < <(served "$port")
    read -r wu ws < <(tail -n1 "$OUT_DIR/time.txt")
    local requests rps p50 p99 user sys services stray ok_pct
    requests=$(awk '/requests in/ {print $1}' "$out")
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    p50=$(to_us "$(awk '$1 == "50%" {print $2}' "$out")")
    p99=$(to_us "$(awk '$1 == "99%" {print $2}' "$out")")
    per_request() { awk -v t="$1" -v n="$requests" -v hz="$HZ" 'BEGIN {printf "%.2f", t * 1e6 / hz / n}'; }
    user=$(per_request $((u1 - u0)))
    sys=$(per_request $((s1 - s0)))
    services=$(per_request $((v1 - v0)))
    OTHER=$(awk -v b="$((b1 - b0))" -v t="$((t1 - t0))" -v s="$((u1 - u0 + s1 - s0 + v1 - v0))" \
        -v w="$(awk -v a="$wu" -v b="$ws" -v hz="$HZ" 'BEGIN {print (a + b) * hz}')" \
        'BEGIN {printf "%.1f", (b - s - w) * 100 / t}')
    # The /metrics scrape itself counts once; wrk's unfinished requests at
    # the end are counted by the server but not by wrk (at most CONNS).
    stray=$((n1 - n0 - requests - 1))
    ((stray > CONNS)) || stray=0
    ok_pct=$(awk -v ok="$((ok1 - ok0))" -v n="$requests" 'BEGIN {printf "%.0f", ok * 100 / n}')
    LINE=$(printf 'run %s %-8s %-8s %10s req/s  p50 %5s us  p99 %6s us  cpu/req %5s us user + %5s us sys  services %5s us  other %5s%%  checkout 200s %3s%%%s' \
        "$1" "$2" "$3" "$rps" "$p50" "$p99" "$user" "$sys" "$services" "$OTHER" "$ok_pct" \
        "$( ((stray == 0)) || echo "  STRAY REQUESTS: $stray")")
    ROW=$(printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s' "$1" "$2" "$3" "$rps" "$p50" "$p99" \
        "$user" "$sys" "$services" "$OTHER" "$stray" "$ok_pct")
}

echo "== warm-up (2s each)"
read -r SALE_NOW ITEMS_NOW < <(active_sale)
for path in nope checkout; do
    run_wrk "$path" "$URING_PORT" 2s >/dev/null
    run_wrk "$path" "$EPOLL_PORT" 2s >/dev/null
done

echo "== runs (order flips every run; other > ${MAX_OTHER}% is discarded and repeated)"
TIMEFORMAT='%U %S'
for run in $(seq 1 "$RUNS"); do
    order=(io-uring epoll)
    ((run % 2 == 0)) && order=(epoll io-uring)
    for path in nope checkout; do
        for driver in "${order[@]}"; do
            for attempt in $(seq 1 "$MAX_ATTEMPTS"); do
                measure "$run" "$path" "$driver" "$attempt"
                if awk -v o="$OTHER" -v m="$MAX_OTHER" 'BEGIN {exit !(o <= m)}' ||
                    ((attempt == MAX_ATTEMPTS)); then
                    echo "$LINE"
                    echo "$ROW" >>"$RESULTS"
                    break
                fi
                echo "$LINE  [disturbed: discarded, repeating]"
            done
        done
    done
done

echo "== summary: ratio epoll / io_uring of each run's pair, then the median"
awk -F'\t' 'NR > 1 { k = $1 SUBSEP $2; if ($3 == "io-uring") { u[k] = $4; uc[k] = $7 + $8 } else { e[k] = $4; ec[k] = $7 + $8 } }
    END {
        for (k in u) { split(k, p, SUBSEP); print p[2], p[1], u[k], e[k], e[k] / u[k], uc[k], ec[k], ec[k] / uc[k] }
    }' "$RESULTS" | sort -k1,1 -k2,2n | awk '
    { printf "%-8s run %s  req/s io_uring %9s epoll %9s  ratio %.3f   cpu/req io_uring %5.2f us epoll %5.2f us  ratio %.3f\n", $1, $2, $3, $4, $5, $6, $7, $8
      r[$1] = r[$1] " " $5; c[$1] = c[$1] " " $8 }
    function median(list,   a, n, i, j, t) {
        n = split(list, a, " ")
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
        return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    END { for (p in r) printf "%-8s median ratio epoll / io_uring: req/s %.3f, cpu per request %.3f\n", p, median(r[p]), median(c[p]) }'
echo "raw wrk output, server logs and results.tsv in $OUT_DIR"
