#!/usr/bin/env bash
# Shell functions the scripts share; sourced, not run. The sourcing script
# defines `log` (a message to stderr with its own prefix) first:
#   . "$ROOT/scripts/lib.sh"

APT_UPDATED=0
# apt_install PACKAGE...: installs Debian packages (as root), running
# `apt-get update` once per script run first. Package maintainer scripts are
# kept from starting system-wide daemons meanwhile (the Debian packages would
# start their own Redis or PostgreSQL on the ports the project uses).
# Returns non-zero, after saying why, when it cannot install.
apt_install() {
  if [[ $(id -u) -ne 0 ]]; then
    log "need root to apt-get install $*"
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if [[ $APT_UPDATED -eq 0 ]]; then
    log "apt-get update"
    apt-get update -qq >/dev/null || { log "apt-get update failed"; return 1; }
    APT_UPDATED=1
  fi
  local policy=/usr/sbin/policy-rc.d created_policy=0 rc=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=1
  fi
  log "apt-get install $*"
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null || rc=$?
  if [[ $created_policy -eq 1 ]]; then rm -f "$policy"; fi
  if [[ $rc -ne 0 ]]; then log "apt-get install $* failed"; fi
  return "$rc"
}

# redis_tuning_conf: the limits, durability and memory settings of every Redis
# the project starts (scripts/services.sh: the single node and the cluster nodes;
# bench/lib.sh: the bench scripts' private instances), as redis.conf lines.
redis_tuning_conf() {
  cat <<'EOF'
maxclients 10000
tcp-backlog 511
# durability: AOF only, fsync once a second (a crash loses at most ~1 s of writes)
save ""
appendonly yes
appendfsync everysec
appendfilename "appendonly.aof"
# AOF rewrites fork and copy the whole dataset: past 64 MB (the default) a
# checkout crowd (~150 bytes of AOF per checkout) triggers one every few
# seconds, each costing CPU beside the crowd; rewrite once the log has doubled
# and passed 1 GB instead.
auto-aof-rewrite-percentage 100
auto-aof-rewrite-min-size 1gb
# Keys of a sale expire together; free them on a background thread.
lazyfree-lazy-expire yes
EOF
}
