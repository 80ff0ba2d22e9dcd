#!/usr/bin/env bash
# Run the server against the local Redis and PostgreSQL:
#   scripts/run.sh [flashsale flags...]      e.g. scripts/run.sh --sale-period-secs 60
# Starts the services (installing them if missing), builds the release binary and
# replaces this shell with it. Configuration: see `target/release/flashsale --help`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

if ! command -v cargo >/dev/null 2>&1 && [[ -f $HOME/.cargo/env ]]; then
  # shellcheck source=/dev/null
  . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found on PATH" >&2; exit 1; }

bash scripts/services.sh start
echo "==> cargo build --release" >&2
cargo build --release
exec target/release/flashsale "$@"
