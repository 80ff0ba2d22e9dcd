#!/usr/bin/env bash
# Side-by-side wrk benchmark of a running server:
#   1. GET /nope        404 from the HTTP layer alone (the reference)
#   2. POST /checkout   random user, random item of the active sale (one Redis script)
# then prints both Requests/sec, their latencies and the ratio checkout / reference.
#
#   bench/run.sh [duration] [connections]        defaults: 10s 64
#   URL=http://127.0.0.1:8080 THREADS=1 COUNT_STATUS=1 bench/run.sh 30s 256
#   WRK_CPUS=1 bench/run.sh      pin wrk to CPU 1 (taskset), e.g. with the server on
#                                FLASHSALE_CORES=1 so the two do not share a core
#
# The server must be running (scripts/run.sh). The two loads run one after the other,
# so on a 2-core machine each gets the same CPU: wrk on one core, the server on the rest.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
URL="${URL:-http://127.0.0.1:8080}"
URL="${URL%/}"
DURATION="${1:-10s}"
CONNECTIONS="${2:-64}"
THREADS="${THREADS:-1}"
USERS="${USERS:-1000000}"
WRK_CPUS="${WRK_CPUS:-}"
OUT_DIR="${OUT_DIR:-$(mktemp -d /tmp/flashsale-bench.XXXXXX)}"
mkdir -p "$OUT_DIR"

die() { echo "bench/run.sh: $*" >&2; exit 1; }

command -v wrk >/dev/null 2>&1 || die "wrk not found; run scripts/bench-tools.sh"
command -v curl >/dev/null 2>&1 || die "curl not found"

WRK=(wrk)
if [[ -n $WRK_CPUS ]]; then
  WRK=(taskset -c "$WRK_CPUS" wrk)
fi

active="$(curl -fsS --max-time 5 "$URL/sales/active")" ||
  die "GET $URL/sales/active failed: is the server running with an active sale?"

if command -v jq >/dev/null 2>&1; then
  read -r SALE_ID ITEMS < <(jq -r '"\(.sale_id) \(.items_total)"' <<<"$active")
else
  read -r SALE_ID ITEMS < <(python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["sale_id"], d["items_total"])' <<<"$active")
fi
[[ $SALE_ID =~ ^[0-9]+$ && $ITEMS =~ ^[0-9]+$ ]] || die "unexpected /sales/active body: $active"

echo "server:      $URL"
echo "sale:        $SALE_ID ($ITEMS items)"
echo "load:        ${WRK[*]} -t$THREADS -c$CONNECTIONS -d$DURATION --latency, one after the other"
echo "raw output:  $OUT_DIR"
echo

echo "--- reference: GET /nope ---"
"${WRK[@]}" -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
  -s "$HERE/notfound.lua" "$URL" | tee "$OUT_DIR/nope.txt"
echo

echo "--- POST /checkout ---"
SALE_ID="$SALE_ID" ITEMS="$ITEMS" USERS="$USERS" COUNT_STATUS="${COUNT_STATUS:-0}" \
  "${WRK[@]}" -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
  -s "$HERE/checkout.lua" "$URL" | tee "$OUT_DIR/checkout.txt"
echo

# Pull the figures out of wrk's report.
rps() { awk '/^Requests\/sec:/ {print $2}' "$1"; }
pct() { awk -v p="$2" '$1 == p {print $2}' "$1"; }
errors() {
  awk '/Non-2xx or 3xx responses:/ {n = $NF} /Socket errors:/ {s = $0} END {
    printf "%s", (n == "" ? 0 : n) " non-2xx"; if (s != "") printf "; %s", s }' "$1"
}

nope_rps="$(rps "$OUT_DIR/nope.txt")"
chk_rps="$(rps "$OUT_DIR/checkout.txt")"
[[ -n $nope_rps && -n $chk_rps ]] || die "could not read Requests/sec from wrk output"

printf '%-16s %14s %10s %10s %10s  %s\n' route "requests/s" p50 p90 p99 "responses"
printf '%-16s %14s %10s %10s %10s  %s\n' "GET /nope" "$nope_rps" \
  "$(pct "$OUT_DIR/nope.txt" 50%)" "$(pct "$OUT_DIR/nope.txt" 90%)" "$(pct "$OUT_DIR/nope.txt" 99%)" \
  "$(errors "$OUT_DIR/nope.txt") (404 expected)"
printf '%-16s %14s %10s %10s %10s  %s\n' "POST /checkout" "$chk_rps" \
  "$(pct "$OUT_DIR/checkout.txt" 50%)" "$(pct "$OUT_DIR/checkout.txt" 90%)" "$(pct "$OUT_DIR/checkout.txt" 99%)" \
  "$(errors "$OUT_DIR/checkout.txt")"
awk -v a="$chk_rps" -v b="$nope_rps" 'BEGIN { printf "ratio checkout / reference: %.3f\n", (b > 0 ? a / b : 0) }'
