#!/usr/bin/env bash
# Shell functions the bench scripts share; sourced, not run:
#   . "$ROOT/bench/lib.sh"

# json_field JSON KEY: prints the top-level field KEY of the JSON object.
json_field() {
  python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"
}

# wait_active_sale BASE_URL SERVER_PID: waits up to 60 s for a server that was
# just started until GET BASE_URL/sales/active answers, and prints the body.
# Returns 1 (printing nothing) when the server exits first or nothing answers
# in time; the caller says why, pointing at its log.
wait_active_sale() {
  local url=$1 pid=$2 active="" i
  for ((i = 0; i < 600; i++)); do
    kill -0 "$pid" 2>/dev/null || return 1
    active="$(curl -fsS --max-time 2 "$url/sales/active" 2>/dev/null || true)"
    if [[ -n $active ]]; then
      printf '%s\n' "$active"
      return 0
    fi
    sleep 0.1
  done
  return 1
}
