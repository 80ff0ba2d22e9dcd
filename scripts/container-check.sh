#!/usr/bin/env bash
# Builds the real Dockerfile with podman and runs the image on this machine:
#
#   scripts/container-check.sh                  the whole check (root; minutes, see README)
#   scripts/container-check.sh --write-seccomp  regenerate deploy/seccomp-io-uring.json from
#                                               the runtime's default profile, then exit
#
# Steps, each PASS/FAIL in the summary at the end:
#   tools      podman, runc, debootstrap (apt), k6 (scripts/bench-tools.sh --k6)
#   seccomp    deploy/seccomp-io-uring.json is the runtime's default profile plus exactly
#              io_uring_setup, io_uring_enter and io_uring_register
#   services   the local Redis and PostgreSQL answer (scripts/services.sh start)
#   bases      stand-ins for the Dockerfile's base images, tagged with the names its FROM
#              lines use: debian:bookworm-slim from debootstrap, the Rust builder from it
#              plus this machine's rustup toolchain (no registry is needed)
#   build      podman build of the real Dockerfile, unmodified (cache mounts, fat LTO)
#   then twice, once under the runtime's default seccomp profile and once under
#   deploy/seccomp-io-uring.json:
#   run        the image on --network host against the local Redis (a database number of
#              its own) and PostgreSQL (a database of its own), on a free port; its
#              /metrics names the commit built (flashsale_build_info)
#   driver     its log line `core IO driver` says epoll under the default profile
#              (io_uring is blocked there), io_uring under the shipped one
#   k6         k6/smoke.js against it (every check, at most 1% failed requests)
#   check      `flashsale check --sale N` from the image: Redis and Postgres agree
#   stop       SIGTERM: exit code 0 and "flashsale stopped cleanly"
#
# Idempotent: images that exist are kept (REBUILD_BASES=1 rebuilds the stand-ins; the
# build reuses podman's layer cache and its cargo cache mounts). What it creates in
# Redis and Postgres is gone when it exits; its containers too.
#
# Knobs (environment): REDIS_PORT (6379), PG_PORT (5432), CHECK_REDIS_DB (default: the
# highest empty database number from 1023 down to 1007, above what the tests, 1..1000,
# and bench/bench.sh, 1000..1006, use; claimed with a key of its own and only ever
# flushed while that key is there), CHECK_PG_DB (flashsale_container; dropped before and
# after), CHECK_PORT (a free port), CHECK_WORK (/var/tmp/flashsale-container-check:
# debootstrap and the toolchain copy), DEBIAN_MIRROR (the mirror apt uses),
# FLASHSALE_K6 (the k6 binary).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

PROFILE="deploy/seccomp-io-uring.json"
DEFAULT_PROFILE="/usr/share/containers/seccomp.json"
IO_URING_SYSCALLS='["io_uring_enter", "io_uring_register", "io_uring_setup"]'

REDIS_PORT="${REDIS_PORT:-6379}"
PG_PORT="${PG_PORT:-5432}"
REDIS_DB=""  # claimed in step_services
PG_DB="${CHECK_PG_DB:-flashsale_container}"
PG_ADMIN_URL="postgres://flashsale@127.0.0.1:$PG_PORT/postgres"
WORK="${CHECK_WORK:-/var/tmp/flashsale-container-check}"
LOGS="$ROOT/target/container-check"
IMAGE="localhost/flashsale:latest"
CONTAINER="flashsale-container-check"

log() { printf '[container-check] %s\n' "$*" >&2; }
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
die() { printf '[container-check] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------
# the seccomp profile: the runtime's default plus the io_uring syscalls
# ---------------------------------------------------------------------------

# seccomp_profile write|verify: write $PROFILE from $DEFAULT_PROFILE, or check that
# $PROFILE is still $DEFAULT_PROFILE plus one rule allowing exactly the io_uring calls.
seccomp_profile() {
  python3 - "$1" "$DEFAULT_PROFILE" "$PROFILE" "$IO_URING_SYSCALLS" <<'PY'
import json, sys

mode, default_path, profile_path, calls = sys.argv[1:]
calls = json.loads(calls)
rule = {
    "names": calls,
    "action": "SCMP_ACT_ALLOW",
    "args": [],
    "comment": "flashsale: the core threads' io_uring runtime (monoio)",
    "includes": {},
    "excludes": {},
}
with open(default_path) as f:
    default = json.load(f)
if mode == "write":
    if any(n.startswith("io_uring") for s in default["syscalls"] for n in s.get("names", [])):
        sys.exit(f"{default_path} already mentions io_uring: look at it before adding a rule")
    default["syscalls"].append(rule)
    # Tab-indented like the default profile: a diff against it shows the one rule.
    with open(profile_path, "w") as f:
        json.dump(default, f, indent="\t")
    print(f"wrote {profile_path}: {default_path} + {', '.join(calls)}")
    sys.exit(0)
with open(profile_path) as f:
    profile = json.load(f)
added = [s for s in profile["syscalls"] if s not in default["syscalls"]]
rest = dict(profile, syscalls=[s for s in profile["syscalls"] if s not in added])
if rest != default:
    sys.exit(f"{profile_path} differs from {default_path} beyond one added rule "
             f"(containers-common changed?): scripts/container-check.sh --write-seccomp")
if len(added) != 1 or sorted(added[0]["names"]) != sorted(calls) \
        or added[0]["action"] != "SCMP_ACT_ALLOW" or added[0].get("args"):
    sys.exit(f"{profile_path} should add one unconditional ALLOW of {calls}, adds {added}")
print(f"{profile_path} = {default_path} + ALLOW {', '.join(calls)}")
PY
}

if [[ ${1:-} == --write-seccomp ]]; then
  [[ -f $DEFAULT_PROFILE ]] || die "$DEFAULT_PROFILE is missing: apt-get install podman"
  mkdir -p "$(dirname "$PROFILE")"
  seccomp_profile write
  exit 0
elif [[ $# -gt 0 ]]; then
  echo "usage: $0 [--write-seccomp]" >&2
  exit 2
fi

[[ $(id -u) -eq 0 ]] || die "run as root (apt-get, rootful podman)"
if ! command -v rustc >/dev/null 2>&1 && [[ -f $HOME/.cargo/env ]]; then
  # shellcheck source=/dev/null
  . "$HOME/.cargo/env"
fi

# ---------------------------------------------------------------------------
# steps and the summary
# ---------------------------------------------------------------------------

STEPS=()     # "name|PASS, FAIL or SKIP|seconds|note"
DRIVER_LINES=()
START_ALL=$SECONDS

# step NAME FUNCTION [ARGS...]: runs FUNCTION, records PASS/FAIL and its duration.
# NOTE (a global) is the step's one-line note for the summary.
step() {
  local name=$1 t0=$SECONDS rc=0
  shift
  NOTE=""
  log "---- $name"
  "$@" || rc=$?
  local result=PASS
  [[ $rc -eq 0 ]] || result=FAIL
  STEPS+=("$name|$result|$((SECONDS - t0))|$NOTE")
  log "---- $name: $result ($((SECONDS - t0)) s) $NOTE"
  return "$rc"
}

skip() { STEPS+=("$1|SKIP|0|$2"); }

summary() {
  local failed=0 s name result secs note
  echo
  echo "==================== container check: summary ===================="
  for s in "${STEPS[@]}"; do
    IFS='|' read -r name result secs note <<<"$s"
    printf '%-4s  %-44s %5ss  %s\n' "$result" "$name" "$secs" "$note"
    [[ $result == PASS ]] || failed=1
  done
  echo "---- io_uring under each seccomp profile (the server's own log lines):"
  for s in "${DRIVER_LINES[@]}"; do echo "$s"; done
  echo "---- total: $((SECONDS - START_ALL)) s; logs in $LOGS"
  if [[ $failed -eq 0 ]]; then echo "CONTAINER CHECK PASSED"; else echo "CONTAINER CHECK FAILED"; fi
  return "$failed"
}

# ---------------------------------------------------------------------------
# podman: runc and cgroupfs (crun and the systemd cgroup manager do not work on
# hosts with hybrid cgroups), no default ulimits (setrlimit may be refused)
# ---------------------------------------------------------------------------

mkdir -p "$WORK" "$LOGS"
export CONTAINERS_CONF="$WORK/containers.conf"
cat >"$CONTAINERS_CONF" <<'EOF'
# Written by scripts/container-check.sh; used through CONTAINERS_CONF only.
[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
EOF
pm() { podman --runtime runc --cgroup-manager=cgroupfs "$@"; }


K6=""
step_tools() {
  local need=()
  command -v podman >/dev/null 2>&1 || need+=(podman)
  command -v runc >/dev/null 2>&1 || need+=(runc)
  command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
  command -v python3 >/dev/null 2>&1 || need+=(python3)
  command -v curl >/dev/null 2>&1 || need+=(curl)
  command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
  command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
  [[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]] || need+=(debian-archive-keyring)
  [[ ${#need[@]} -eq 0 ]] || apt_install "${need[@]}" || { NOTE="apt-get install ${need[*]} failed"; return 1; }
  K6="${FLASHSALE_K6:-}"
  [[ -n $K6 ]] || K6="$(bash scripts/bench-tools.sh --k6 | tail -n1)"
  [[ -x $K6 ]] || { NOTE="no k6"; return 1; }
  NOTE="$(podman --version), runc $(runc --version | head -n1 | awk '{print $3}'), k6 $("$K6" version | head -n1 | awk '{print $2}')"
}

step_seccomp() {
  [[ -f $DEFAULT_PROFILE ]] || { NOTE="$DEFAULT_PROFILE missing"; return 1; }
  NOTE="$(seccomp_profile verify 2>&1)" || return 1
}

# The Redis database is shared with whoever else uses this Redis: the check takes an
# empty one, claims it with CLAIM_KEY (SET NX, so two checks never share one) and
# flushes it only while its claim is still there.
CLAIM_KEY="flashsale:container-check:claim"
CLAIM="$$-$RANDOM"
rcli() { redis-cli -p "$REDIS_PORT" -n "$REDIS_DB" "$@"; }
claimed() { [[ -n $REDIS_DB && $(rcli get "$CLAIM_KEY" 2>/dev/null) == "$CLAIM" ]]; }

claim_redis_db() {
  local db candidates
  if [[ -n ${CHECK_REDIS_DB:-} ]]; then candidates=("$CHECK_REDIS_DB"); else mapfile -t candidates < <(seq 1023 -1 1007); fi
  for db in "${candidates[@]}"; do
    REDIS_DB=$db
    if [[ $(rcli set "$CLAIM_KEY" "$CLAIM" NX) == OK ]]; then
      [[ $(rcli dbsize) == 1 ]] && return 0
      rcli del "$CLAIM_KEY" >/dev/null # someone else's data is there
    fi
  done
  REDIS_DB=""
  return 1
}

# Empties the claimed database but for the claim.
flush_claimed() {
  claimed || return 1
  rcli flushdb >/dev/null && rcli set "$CLAIM_KEY" "$CLAIM" >/dev/null
}

step_services() {
  redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG \
    || { NOTE="no Redis on 127.0.0.1:$REDIS_PORT: scripts/services.sh start"; return 1; }
  psql -X -q -d "$PG_ADMIN_URL" -c 'SELECT 1' >/dev/null 2>&1 \
    || { NOTE="no PostgreSQL at $PG_ADMIN_URL: scripts/services.sh start"; return 1; }
  claim_redis_db || { NOTE="no empty Redis database in ${CHECK_REDIS_DB:-1023..1007} (set CHECK_REDIS_DB)"; return 1; }
  REDIS_URL="redis://127.0.0.1:$REDIS_PORT/$REDIS_DB"
  NOTE="Redis :$REDIS_PORT db $REDIS_DB (empty, claimed), PostgreSQL :$PG_PORT database $PG_DB"
}

# ---------------------------------------------------------------------------
# stand-ins for the base images
# ---------------------------------------------------------------------------

# The images the Dockerfile's FROM lines name (build stages excluded).
from_images() {
  awk 'toupper($1) == "FROM" { for (i = 2; i <= NF; i++) if ($i !~ /^--/) { print $i; break } }' Dockerfile
}

# The mirror apt already uses for bookworm (deb822 or one-line sources).
debian_mirror() {
  if [[ -n ${DEBIAN_MIRROR:-} ]]; then echo "$DEBIAN_MIRROR"; return; fi
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    uri="$(awk '/^URIs:/ { u = $2 } /^Suites:/ && / bookworm( |$)/ { print u; exit }' "$f")"
    [[ -n $uri ]] && { echo "$uri"; return; }
  done
  uri="$(awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)"
  echo "${uri:-http://deb.debian.org/debian}"
}

have_image() { pm image exists "$1"; }

# debian:bookworm-slim: debootstrap --variant=minbase, imported.
build_debian_standin() {
  local ref=$1 mirror rootfs="$WORK/rootfs"
  mirror="$(debian_mirror)"
  log "debootstrap --variant=minbase bookworm from $mirror (about 30 s)"
  rm -rf "$rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$LOGS/debootstrap.log" 2>&1 \
    || { tail -n 20 "$LOGS/debootstrap.log" >&2; return 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | pm import --change 'CMD ["bash"]' - "$ref" >>"$LOGS/debootstrap.log" 2>&1 \
    || { tail -n 20 "$LOGS/debootstrap.log" >&2; return 1; }
  rm -rf "$rootfs"
}

# The Rust builder: the Debian stand-in, a C toolchain (cc links; mimalloc is C), the
# host's local CA certificates (cargo reaches crates.io through whatever TLS setup this
# host has) and this machine's rustup toolchain where the official image has its own.
build_rust_standin() {
  local ref=$1 debian=$2 want have host tc ctx="$WORK/rust-standin"
  want="${ref##*:}"
  want="${want%%-*}"
  have="$(rustc --version | awk '{print $2}')"
  if [[ $have != "$want" && $have != "$want".* ]]; then
    NOTE="the Dockerfile wants Rust $want, this machine has rustc $have"
    return 1
  fi
  host="$(rustc -vV | awk '/^host:/ { print $2 }')"
  tc="$(rustc --print sysroot)"
  log "toolchain $tc (rustc $have) into $ref"
  rm -rf "$ctx"
  mkdir -p "$ctx/local-ca"
  # hard links where possible: the context costs no copy
  cp -al "$tc" "$ctx/toolchain" 2>/dev/null || cp -a "$tc" "$ctx/toolchain"
  rm -rf "$ctx/toolchain/share/doc"
  cp /usr/local/share/ca-certificates/*.crt "$ctx/local-ca/" 2>/dev/null || true
  cat >"$ctx/Containerfile" <<EOF
FROM $debian
COPY local-ca/ /usr/local/share/ca-certificates/
RUN apt-get update \\
 && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev make pkg-config \\
 && rm -rf /var/lib/apt/lists/* \\
 && update-ca-certificates
ENV RUSTUP_HOME=/usr/local/rustup \\
    CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    RUST_VERSION=$have
COPY toolchain /usr/local/rustup/toolchains/$have-$host
RUN mkdir -p /usr/local/cargo/bin \\
 && ln -s /usr/local/rustup/toolchains/$have-$host/bin/* /usr/local/cargo/bin/ \\
 && rustc --version && cargo --version
EOF
  pm build --network host --pull=never -t "$ref" "$ctx" >"$LOGS/rust-standin.log" 2>&1 \
    || { tail -n 20 "$LOGS/rust-standin.log" >&2; return 1; }
  rm -rf "$ctx"
}

step_bases() {
  local images debian="" rust="" ref made=()
  mapfile -t images < <(from_images)
  for ref in "${images[@]}"; do
    case $ref in
      debian:bookworm*) debian=$ref ;;
      rust:*) rust=$ref ;;
      *) NOTE="no stand-in for FROM $ref"; return 1 ;;
    esac
  done
  [[ -n $debian && -n $rust ]] || { NOTE="expected a rust:* and a debian:bookworm* FROM, got ${images[*]}"; return 1; }
  # Fully qualified, as podman resolves the Dockerfile's short names.
  local debian_ref="docker.io/library/$debian" rust_ref="docker.io/library/$rust"
  if [[ ${REBUILD_BASES:-0} == 1 ]] || ! have_image "$debian_ref"; then
    build_debian_standin "$debian_ref" || return 1
    made+=("$debian")
  fi
  if [[ ${REBUILD_BASES:-0} == 1 ]] || ! have_image "$rust_ref"; then
    build_rust_standin "$rust_ref" "$debian_ref" || return 1
    made+=("$rust")
  fi
  NOTE="$debian, $rust"
  [[ ${#made[@]} -eq 0 ]] && NOTE+=" (kept from an earlier run)" || NOTE+=" (built: ${made[*]})"
}

COMMIT=""
step_build() {
  COMMIT="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
  log "podman build of the Dockerfile (fat LTO: minutes on 2 cores); log: $LOGS/build.log"
  pm build --network host --pull=never --build-arg FLASHSALE_COMMIT="$COMMIT" -t "$IMAGE" . \
    >"$LOGS/build.log" 2>&1 || { tail -n 30 "$LOGS/build.log" >&2; return 1; }
  NOTE="$IMAGE $(pm image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}')"
}

# ---------------------------------------------------------------------------
# running the image
# ---------------------------------------------------------------------------

REDIS_URL=""  # set with the claimed database
DATABASE_URL="postgres://flashsale@127.0.0.1:$PG_PORT/$PG_DB"

fresh_state() {
  flush_claimed || { NOTE="Redis db $REDIS_DB: our claim is gone (someone else flushed it?)"; return 1; }
  psql -X -q -d "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 \
    && psql -X -q -d "$PG_ADMIN_URL" -c "CREATE DATABASE $PG_DB OWNER flashsale" >/dev/null \
    || { NOTE="cannot create the Postgres database $PG_DB"; return 1; }
}

cleanup() {
  pm rm -f -t 5 "$CONTAINER" >/dev/null 2>&1 || true
  if claimed; then rcli flushdb >/dev/null 2>&1 || true; fi
  psql -X -q -d "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Sales rotate on the hour (SALE_PERIOD_SECS=3600): a smoke that straddles the turn
# would see a new sale mid-run. Wait the turn out when it is less than 2 minutes away.
avoid_sale_turn() {
  local left=$((3600 - $(date +%s) % 3600))
  if ((left < 120)); then
    log "the hourly sale turns in $left s: waiting for it"
    sleep $((left + 5))
  fi
}

PORT=""
# run_server TAG [podman run options...]: the image, detached, on a free port; waits for
# /sales/active. The driver line goes to DRIVER_LINES.
run_server() {
  local tag=$1 i
  shift
  PORT="${CHECK_PORT:-$(free_port)}"
  fresh_state || return 1
  pm rm -f "$CONTAINER" >/dev/null 2>&1 || true
  pm run -d --name "$CONTAINER" --network host "$@" \
    -e FLASHSALE_LISTEN="127.0.0.1:$PORT" -e REDIS_URL="$REDIS_URL" -e DATABASE_URL="$DATABASE_URL" \
    "$IMAGE" >/dev/null || return 1
  for ((i = 0; i < 300; i++)); do
    curl -fsS --max-time 2 "http://127.0.0.1:$PORT/sales/active" >/dev/null 2>&1 && break
    if [[ $(pm inspect -f '{{.State.Running}}' "$CONTAINER") != true ]]; then
      pm logs "$CONTAINER" >&2
      NOTE="the container exited"
      return 1
    fi
    sleep 0.2
  done
  pm logs "$CONTAINER" >"$LOGS/server-$tag.log" 2>&1
  curl -fsS --max-time 2 "http://127.0.0.1:$PORT/sales/active" >/dev/null \
    || { NOTE="no active sale after 60 s"; return 1; }
  local seccomp
  seccomp="$(pm inspect -f '{{range .HostConfig.SecurityOpt}}{{.}} {{end}}' "$CONTAINER")"
  [[ -n ${seccomp// /} ]] || seccomp="the runtime's default, $(pm info -f '{{.Host.Security.SECCOMPProfilePath}}')"
  NOTE="127.0.0.1:$PORT, user $(pm exec "$CONTAINER" id -un), seccomp: ${seccomp% }"
  # the build the image says it is
  local info
  info="$(curl -fsS --max-time 5 "http://127.0.0.1:$PORT/metrics" | grep '^flashsale_build_info' || true)"
  [[ $info == *"commit=\"$COMMIT\""* ]] || { NOTE+="; /metrics: ${info:-no flashsale_build_info}, expected commit $COMMIT"; return 1; }
  NOTE+=", ${info% 1}"
}

# check_driver TAG LABEL WANT: the server's `core IO driver` line names WANT.
check_driver() {
  local tag=$1 label=$2 want=$3 lines
  lines="$(grep -E 'io_uring is not available|core IO driver' "$LOGS/server-$tag.log" || true)"
  DRIVER_LINES+=("[$label]")
  while IFS= read -r l; do DRIVER_LINES+=("  $l"); done <<<"${lines:-(no driver line in the log)}"
  grep 'core IO driver' "$LOGS/server-$tag.log" | grep -q "driver=\"$want\"" \
    || { NOTE="expected driver=\"$want\""; return 1; }
  NOTE="driver=\"$want\""
}

SALE_ID=""
run_k6() {
  local tag=$1 summary="$LOGS/k6-$tag.json" rc=0
  rm -f "$summary"
  BASE_URL="http://127.0.0.1:$PORT" SUMMARY_JSON="$summary" USER_LIMIT=10 RATE=30 DURATION=5s \
    K6_NO_USAGE_REPORT=true \
    timeout 180 "$K6" run --quiet --no-color --no-usage-report --address 127.0.0.1:0 k6/smoke.js \
    >"$LOGS/k6-$tag.log" 2>&1 || rc=$?
  [[ -f $summary ]] || { tail -n 30 "$LOGS/k6-$tag.log" >&2; NOTE="no k6 summary (exit $rc)"; return 1; }
  local facts
  facts="$(python3 - "$summary" <<'PY'
import json, sys
f = json.load(open(sys.argv[1]))["flashsale"]
o = f["outcomes"]
print(f["sale_id"], f'{f["requests"]} requests, checks {f["checks"]["passes"]} passed '
      f'{f["checks"]["fails"]} failed, {o["purchases_won"]} purchases ({o["items_won"]} items)')
PY
)" || { NOTE="unreadable k6 summary"; return 1; }
  SALE_ID="${facts%% *}"
  NOTE="k6 exit $rc: ${facts#* }"
  claimed || { NOTE+="; Redis db $REDIS_DB was flushed by someone else during the run"; return 1; }
  [[ $rc -eq 0 ]] || { tail -n 30 "$LOGS/k6-$tag.log" >&2; return 1; }
}

run_check() {
  local tag=$1 rc=0
  [[ -n $SALE_ID ]] || { NOTE="no sale id from k6"; return 1; }
  sleep 1 # the writer flushes every few ms; `check` also re-reads before it reports
  pm run --rm --network host -e REDIS_URL="$REDIS_URL" -e DATABASE_URL="$DATABASE_URL" \
    "$IMAGE" check --sale "$SALE_ID" >"$LOGS/check-$tag.log" 2>&1 || rc=$?
  NOTE="flashsale check --sale $SALE_ID: exit $rc, $(tail -n1 "$LOGS/check-$tag.log" | cut -c1-100)"
  [[ $rc -eq 0 ]] || { cat "$LOGS/check-$tag.log" >&2; return 1; }
}

stop_server() {
  local tag=$1 code
  pm stop -t 30 "$CONTAINER" >/dev/null || return 1
  pm logs "$CONTAINER" >"$LOGS/server-$tag.log" 2>&1
  code="$(pm inspect -f '{{.State.ExitCode}}' "$CONTAINER")"
  pm rm -f "$CONTAINER" >/dev/null
  NOTE="exit code $code"
  [[ $code == 0 ]] && grep -q 'flashsale stopped cleanly' "$LOGS/server-$tag.log" \
    || { tail -n 20 "$LOGS/server-$tag.log" >&2; return 1; }
  NOTE+=", \"flashsale stopped cleanly\""
}

# one_profile TAG LABEL WANT_DRIVER [podman run options...]: the image under one
# seccomp profile (LABEL in the summary, TAG in file names).
one_profile() {
  local tag=$1 label=$2 want=$3
  shift 3
  avoid_sale_turn
  if ! step "$label: run" run_server "$tag" "$@"; then
    skip "$label: driver" "the server did not start"
    return 1
  fi
  step "$label: driver" check_driver "$tag" "$label" "$want" || true
  if step "$label: k6 smoke" run_k6 "$tag"; then
    step "$label: flashsale check" run_check "$tag" || true
  else
    skip "$label: flashsale check" "no k6 run"
  fi
  step "$label: SIGTERM stop" stop_server "$tag" || true
}

main() {
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  step "tools" step_tools || { summary; return 1; }
  step "seccomp profile" step_seccomp || true
  step "services" step_services || { summary; return 1; }
  step "base image stand-ins" step_bases || { summary; return 1; }
  step "podman build" step_build || { summary; return 1; }
  one_profile default "default seccomp" epoll || true
  one_profile io-uring-profile "$PROFILE" io_uring --security-opt "seccomp=$ROOT/$PROFILE" || true
  summary
}

main 2>&1 | tee "$LOGS/container-check.log"
exit "${PIPESTATUS[0]}"
