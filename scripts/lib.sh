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
