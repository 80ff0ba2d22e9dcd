#!/usr/bin/env bash
# Instructions per response body, simd-json against serde_json, on the server's
# response types (bench/json_writers.rs), counted by callgrind: unlike time,
# the count does not depend on what else the machine is running.
#
#   bench/json_callgrind.sh            (from anywhere; needs valgrind:
#                                       scripts/bench-tools.sh --profile)
#   N=20000 bench/json_callgrind.sh    bodies per count (items-100 gets N/50)
#
# Only `measured_loop` is counted (--toggle-collect), so start-up and the
# building of the values are not; each figure is Ir / bodies.
set -euo pipefail

cd "$(dirname "$0")/.."
N=${N:-20000}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/json-callgrind.XXXXXX)}
mkdir -p "$OUT_DIR"
command -v valgrind >/dev/null || { echo "valgrind not found: scripts/bench-tools.sh --profile" >&2; exit 1; }

bin=$(cargo bench --bench json_writers --no-run 2>&1 |
    sed -n 's/.*Executable .*(\(.*json_writers-[0-9a-f]*\)).*/\1/p' | tail -n1)
[[ -x $bin ]] || { echo "could not build the json_writers bench" >&2; exit 1; }

count() { # writer case bodies -> instructions per body
    local file="$OUT_DIR/callgrind.$1.$2"
    valgrind --tool=callgrind --callgrind-out-file="$file" \
        --toggle-collect='*measured_loop*' "$bin" count "$1" "$2" "$3" >/dev/null 2>&1
    awk -v n="$3" '/^totals:/ {printf "%.0f", $2 / n}' "$file"
}

printf '%-13s %12s %12s %10s\n' case simd-json serde_json simd/serde
for case in checkout-1 checkout-10 purchase-200 purchase-409 error active-sale items-100; do
    bodies=$N
    [[ $case == items-100 ]] && bodies=$((N / 50))
    simd=$(count simd-json "$case" "$bodies")
    serde=$(count serde_json "$case" "$bodies")
    printf '%-13s %12s %12s %10.3f\n' "$case" "$simd" "$serde" "$(awk -v a="$simd" -v b="$serde" 'BEGIN {print a / b}')"
done
echo "instructions per body (callgrind Ir of measured_loop / bodies); profiles in $OUT_DIR"
