#!/usr/bin/env bash
# The project's one test command:
#   scripts/test.sh [extra args for cargo test]     e.g. scripts/test.sh -- --nocapture
# Stages: services (local Redis + PostgreSQL, the local Redis Cluster), k6, rustfmt, clippy, cargo test.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

stage() { printf '\n==> [test.sh] %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1 && [[ -f $HOME/.cargo/env ]]; then
  # shellcheck source=/dev/null
  . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found on PATH" >&2; exit 1; }

stage "services: scripts/services.sh start"
bash scripts/services.sh start

# Admin URLs for the tests: each test creates its own Redis database number and
# its own PostgreSQL database (the role `flashsale` has CREATEDB).
export TEST_REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:${REDIS_PORT:-6379}}"
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://flashsale@127.0.0.1:${PG_PORT:-5432}/postgres}"
echo "TEST_REDIS_URL=$TEST_REDIS_URL"
echo "TEST_DATABASE_URL=$TEST_DATABASE_URL"

# The local Redis Cluster for the cluster tests (tests/cluster_*.rs), which find its
# seed list in TEST_REDIS_CLUSTER_URL.
stage "services: scripts/services.sh cluster-start"
cluster_out="$(bash scripts/services.sh cluster-start)"
echo "$cluster_out"
cluster_url="$(sed -n 's/^REDIS_URL=//p' <<<"$cluster_out" | tail -n1)"
export TEST_REDIS_CLUSTER_URL="${TEST_REDIS_CLUSTER_URL:-$cluster_url}"
echo "TEST_REDIS_CLUSTER_URL=$TEST_REDIS_CLUSTER_URL"

# k6 for the smoke test (tests/k6_smoke.rs), which finds it through FLASHSALE_K6.
stage "k6: scripts/bench-tools.sh --k6"
FLASHSALE_K6="$(bash scripts/bench-tools.sh --k6 | tail -n1)"
export FLASHSALE_K6
echo "FLASHSALE_K6=$FLASHSALE_K6"

stage "format: cargo fmt --all -- --check"
cargo fmt --all -- --check

stage "lint: cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

# The binary's unit tests and the integration tests; examples (bench/codec's
# references) are built by clippy above and are not test targets.
stage "test: cargo test --lib --bins --tests $*"
cargo test --lib --bins --tests "$@"

# The API suite once more with every server on the local Redis Cluster, each on
# a key prefix of its own instead of a database number.
stage "test on the Redis Cluster: FLASHSALE_TEST_REDIS=cluster cargo test --test api $*"
FLASHSALE_TEST_REDIS=cluster cargo test --test api "$@"

stage "all stages passed"
