#!/usr/bin/env bash
# Run the server against the local Redis and PostgreSQL:
#   scripts/run.sh [flashsale flags...]      e.g. scripts/run.sh --sale-period-secs 60
#   FLASHSALE_REDIS=cluster scripts/run.sh   the same on the local Redis Cluster
# Starts the services (installing them if missing), builds the release binary and
# replaces this shell with it. Configuration: see `target/release/flashsale --help`.
# FLASHSALE_REDIS: `single` (default: the Redis node on 127.0.0.1:6379) or `cluster`
# (`scripts/services.sh cluster-start`; REDIS_URL becomes its seed list).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

if ! command -v cargo >/dev/null 2>&1 && [[ -f $HOME/.cargo/env ]]; then
  # shellcheck source=/dev/null
  . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found on PATH" >&2; exit 1; }

bash scripts/services.sh start
case "${FLASHSALE_REDIS:-single}" in
  single) ;;
  cluster)
    REDIS_URL="$(bash scripts/services.sh cluster-start | sed -n 's/^REDIS_URL=//p')"
    [[ -n $REDIS_URL ]] || { echo "scripts/services.sh cluster-start printed no REDIS_URL" >&2; exit 1; }
    export REDIS_URL
    echo "==> REDIS_URL=$REDIS_URL" >&2
    ;;
  *) echo "FLASHSALE_REDIS=$FLASHSALE_REDIS: expected single or cluster" >&2; exit 2 ;;
esac
echo "==> cargo build --release" >&2
cargo build --release
exec target/release/flashsale "$@"
