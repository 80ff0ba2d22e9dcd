#!/usr/bin/env bash
# Our HTTP layer (httparse + our response writer) against monoio-http's h1
# codec, on the 404 path, side by side in one run: A B C A B C A B C.
#
#   A = target/release/flashsale, FLASHSALE_CORES=1, on $OURS_PORT (8080, or 8090
#       if another flashsale already holds 8080)
#   B = target/release/examples/monoio_http_reference, 1 thread, on $REF_PORT (8081)
#   C = target/release/examples/httparse_reference (our src/http in the same shell
#       as B: the codec and connection loop alone), 1 thread, on $SHELL_PORT (8082)
#
# Each run: wrk -t1 -c64 -d10s --latency http://127.0.0.1:PORT/nope
#
# Usage: bench/codec/compare.sh            (from the repository root)
#   RUNS=3 DURATION=10s WARMUP=2s WRK_CPU=1 PERF=0 QUIET_WAIT=300 MAX_OTHER=5
#   Before each run the script waits (up to QUIET_WAIT s) until the machine is
#   idle (< 5% busy over 1 s: the two CPUs are shared with other engineers),
#   and it reports for each run the CPU used by anything other than the server
#   under test and wrk ("other %", of both CPUs; steal included); a run where
#   others used more than MAX_OTHER % is printed, discarded and repeated (up to
#   MAX_ATTEMPTS times; the last attempt is kept whatever it shows). It also
#   reports the server's own CPU per request (user and system, from
#   /proc/PID/stat), which does not depend on wrk keeping up.
#   PERF=1 also records `perf record -e cpu-clock -g` of each server under a
#   separate 10 s wrk run after the measured runs (reports in $OUT_DIR).
# Needs Redis and Postgres for flashsale (REDIS_URL, DATABASE_URL below).
set -euo pipefail

cd "$(dirname "$0")/../.."
OURS_BIN=target/release/flashsale
REF_BIN=target/release/examples/monoio_http_reference
SHELL_BIN=target/release/examples/httparse_reference
RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
WRK_CPU=${WRK_CPU:-1}      # servers pin themselves to CPU 0; wrk goes on the other core
PERF=${PERF:-0}
QUIET_WAIT=${QUIET_WAIT:-300}
MAX_OTHER=${MAX_OTHER:-5}  # % of both CPUs used by others during a run before it is repeated
MAX_ATTEMPTS=${MAX_ATTEMPTS:-4}
OUT_DIR=${OUT_DIR:-/tmp/codec-compare}
REF_PORT=${REF_PORT:-8081}
SHELL_PORT=${SHELL_PORT:-8082}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/9}
DATABASE_URL=${DATABASE_URL:-postgres://flashsale@127.0.0.1:5432/bench}
mkdir -p "$OUT_DIR"

for bin in "$OURS_BIN" "$REF_BIN" "$SHELL_BIN"; do
    [[ -x $bin ]] || { echo "missing $bin (cargo build --release --examples)" >&2; exit 1; }
done

listening() { ss -ltnH "sport = :$1" | grep -q .; }
if [[ -z ${OURS_PORT:-} ]]; then
    OURS_PORT=8080
    listening 8080 && OURS_PORT=8090
fi
for port in "$OURS_PORT" "$REF_PORT" "$SHELL_PORT"; do
    if listening "$port"; then
        echo "port $port is already in use:" >&2
        ss -ltnpH "sport = :$port" >&2
        exit 1
    fi
done

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    done
}
trap cleanup EXIT

REDIS_URL=$REDIS_URL DATABASE_URL=$DATABASE_URL FLASHSALE_LOG=warn FLASHSALE_CORES=1 \
    FLASHSALE_LISTEN=127.0.0.1:$OURS_PORT "$OURS_BIN" >"$OUT_DIR/flashsale.log" 2>&1 &
OURS_PID=$!
PIDS+=("$OURS_PID")
"$REF_BIN" "127.0.0.1:$REF_PORT" 1 >"$OUT_DIR/reference.log" 2>&1 &
REF_PID=$!
PIDS+=("$REF_PID")
"$SHELL_BIN" "127.0.0.1:$SHELL_PORT" 1 >"$OUT_DIR/httparse.log" 2>&1 &
SHELL_PID=$!
PIDS+=("$SHELL_PID")

wait_up() {
    for _ in $(seq 1 150); do
        curl -s -o /dev/null "http://127.0.0.1:$1/nope" && return 0
        sleep 0.1
    done
    echo "nothing answers on port $1; see $OUT_DIR/*.log" >&2
    exit 1
}
wait_up "$OURS_PORT"
wait_up "$REF_PORT"
wait_up "$SHELL_PORT"

echo "== machine"
echo "$(nproc) CPUs; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "ours: pid $OURS_PID on :$OURS_PORT; monoio-http: pid $REF_PID on :$REF_PORT; wrk on CPU $WRK_CPU"

echo "== sanity: same status and body"
for port in "$OURS_PORT" "$REF_PORT" "$SHELL_PORT"; do
    curl -s -D "$OUT_DIR/head.$port" -o "$OUT_DIR/body.$port" "http://127.0.0.1:$port/nope"
    echo "-- :$port"
    tr -d '\r' <"$OUT_DIR/head.$port"
    cat "$OUT_DIR/body.$port"
    echo
done
status() { head -n1 "$OUT_DIR/head.$1" | tr -d '\r'; }
if [[ $(status "$OURS_PORT") == "$(status "$REF_PORT")" ]] &&
    cmp -s "$OUT_DIR/body.$OURS_PORT" "$OUT_DIR/body.$REF_PORT"; then
    echo "OK: identical status line and body"
else
    echo "MISMATCH between the two servers" >&2
    exit 1
fi

# wrk latency text (e.g. 412.00us, 1.02ms, 1.10s) -> microseconds
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") f = 1; else if (u == "ms") f = 1000; else if (u == "s") f = 1000000; else f = 0
        printf "%.0f", n * f }'
}

run_wrk() { # port duration -> wrk output
    taskset -c "$WRK_CPU" wrk -t1 -c64 -d"$2" --latency "http://127.0.0.1:$1/nope"
}

# "busy total" jiffies of all CPUs (busy includes irq, softirq and steal)
cpu_jiffies() { awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
# user and system ticks of a process, all its threads
proc_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

wait_quiet() {
    local waited=0 b0 t0 b1 t1
    while :; do
        read -r b0 t0 < <(cpu_jiffies)
        sleep 1
        read -r b1 t1 < <(cpu_jiffies)
        if (((b1 - b0) * 100 < 5 * (t1 - t0))); then
            return 0
        fi
        waited=$((waited + 1))
        if ((waited >= QUIET_WAIT)); then
            echo "   (machine still busy after ${QUIET_WAIT}s; running anyway)" >&2
            return 0
        fi
    done
}

# One measured run: wrk against $port, with the CPU the server ($pid) used,
# and the CPU anything else used meanwhile. Sets the globals below.
measure() { # port pid out
    local port=$1 pid=$2 out=$3 b0 t0 b1 t1 u0 s0 u1 s1 wu ws
    wait_quiet
    read -r b0 t0 < <(cpu_jiffies)
    read -r u0 s0 < <(proc_ticks "$pid")
    { time run_wrk "$port" "$DURATION" >"$out"; } 2>"$OUT_DIR/time.txt"
    read -r b1 t1 < <(cpu_jiffies)
    read -r u1 s1 < <(proc_ticks "$pid")
    read -r wu ws < <(tail -n1 "$OUT_DIR/time.txt")
    RPS=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    P50=$(to_us "$(awk '$1 == "50%" {print $2}' "$out")")
    P99=$(to_us "$(awk '$1 == "99%" {print $2}' "$out")")
    local requests
    requests=$(awk '/requests in/ {print $1}' "$out")
    # server CPU per request, user and system, in microseconds
    USER_US=$(awk -v t="$((u1 - u0))" -v n="$requests" -v hz="$HZ" 'BEGIN {printf "%.2f", t * 1e6 / hz / n}')
    SYS_US=$(awk -v t="$((s1 - s0))" -v n="$requests" -v hz="$HZ" 'BEGIN {printf "%.2f", t * 1e6 / hz / n}')
    OTHER=$(awk -v b="$((b1 - b0))" -v t="$((t1 - t0))" -v s="$((u1 - u0 + s1 - s0))" \
        -v w="$(awk -v a="$wu" -v b="$ws" -v hz="$HZ" 'BEGIN {print (a + b) * hz}')" \
        'BEGIN {printf "%.1f", (b - s - w) * 100 / t}')
    # Every response is a 404, so wrk's "Non-2xx" is the request count;
    # socket errors are what would show a problem.
    ERRS=$(awk '/Socket errors/ {print $0}' "$out" | sed 's/^ *//')
}

echo "== warm-up ($WARMUP each)"
run_wrk "$OURS_PORT" "$WARMUP" >/dev/null
run_wrk "$REF_PORT" "$WARMUP" >/dev/null
run_wrk "$SHELL_PORT" "$WARMUP" >/dev/null

echo "== runs (A B C alternating; a run with other > ${MAX_OTHER}% is discarded and repeated)"
RESULTS="$OUT_DIR/results.tsv"
printf 'run\tserver\treq_s\tp50_us\tp99_us\tuser_us_per_req\tsys_us_per_req\tother_cpu_pct\tsocket_errors\n' >"$RESULTS"
TIMEFORMAT='%U %S'
for run in $(seq 1 "$RUNS"); do
    for side in ours monoio-http httparse; do
        case $side in
            ours) port=$OURS_PORT pid=$OURS_PID ;;
            monoio-http) port=$REF_PORT pid=$REF_PID ;;
            httparse) port=$SHELL_PORT pid=$SHELL_PID ;;
        esac
        for attempt in $(seq 1 "$MAX_ATTEMPTS"); do
            measure "$port" "$pid" "$OUT_DIR/wrk.$run.$side.$attempt.txt"
            line=$(printf 'run %s %-12s %10s req/s  p50 %5s us  p99 %6s us  cpu/req %5s us user + %5s us sys  other %5s%%  %s' \
                "$run" "$side" "$RPS" "$P50" "$P99" "$USER_US" "$SYS_US" "$OTHER" "${ERRS:-no socket errors}")
            if awk -v o="$OTHER" -v m="$MAX_OTHER" 'BEGIN {exit !(o <= m)}' || ((attempt == MAX_ATTEMPTS)); then
                echo "$line"
                printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$side" "$RPS" "$P50" "$P99" \
                    "$USER_US" "$SYS_US" "$OTHER" "${ERRS:-none}" >>"$RESULTS"
                break
            fi
            echo "$line  [disturbed: discarded, repeating]"
        done
    done
done

echo "== summary"
awk -F'\t' 'NR > 1 {
        if ($2 == "ours") { o[$1] = $3; op50 += $4; op99 += $5; ou += $6; osy += $7; on++ }
        else if ($2 == "httparse") { h[$1] = $3; hu += $6; hsy += $7; hn++ }
        else { m[$1] = $3; mp50 += $4; mp99 += $5; mu += $6; msy += $7; mn++ }
    }
    END {
        for (r in o) { ratio += o[r] / m[r]; hratio += h[r] / m[r]; n++; os += o[r]; ms += m[r]; hs += h[r] }
        printf "mean req/s: ours %.0f, monoio-http shell %.0f, httparse shell %.0f\n", os / n, ms / n, hs / n
        printf "codec alone (same shell): mean of per-pair ratios httparse/monoio-http: %.3f\n", hratio / n
        printf "server CPU per request: httparse shell %.2f us user + %.2f us sys\n", hu / hn, hsy / hn
        printf "mean of per-pair ratios ours/monoio-http: %.3f; ratio of means: %.3f\n", ratio / n, os / ms
        printf "mean p50: ours %.0f us, monoio-http %.0f us; mean p99: ours %.0f us, monoio-http %.0f us\n",
            op50 / on, mp50 / mn, op99 / on, mp99 / mn
        printf "server CPU per request: ours %.2f us user + %.2f us sys, monoio-http %.2f us user + %.2f us sys\n",
            ou / on, osy / on, mu / mn, msy / mn
    }' "$RESULTS"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "raw wrk output and results.tsv in $OUT_DIR"

if [[ $PERF == 1 ]]; then
    echo "== perf record -e cpu-clock -g (10 s of wrk each)"
    for side in ours monoio-http; do
        if [[ $side == ours ]]; then port=$OURS_PORT pid=$OURS_PID; else port=$REF_PORT pid=$REF_PID; fi
        wait_quiet
        perf record -e cpu-clock -g -p "$pid" -o "$OUT_DIR/perf.$side.data" -- sleep 10 \
            >/dev/null 2>&1 &
        perf_pid=$!
        run_wrk "$port" 10s | awk '/^Requests\/sec:/ {print "'"$side"' under perf: " $2 " req/s"}'
        wait "$perf_pid" || true
        perf report -i "$OUT_DIR/perf.$side.data" --no-children --stdio --percent-limit 0.7 \
            --sort symbol -g none 2>/dev/null >"$OUT_DIR/perf.$side.self.txt" || true
        perf report -i "$OUT_DIR/perf.$side.data" --no-children --stdio --sort dso -g none \
            2>/dev/null >"$OUT_DIR/perf.$side.dso.txt" || true
        perf report -i "$OUT_DIR/perf.$side.data" --children --stdio --percent-limit 2 \
            --sort symbol -g none 2>/dev/null >"$OUT_DIR/perf.$side.children.txt" || true
    done
    echo "perf reports: $OUT_DIR/perf.*.txt"
fi
