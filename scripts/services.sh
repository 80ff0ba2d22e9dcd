#!/usr/bin/env bash
# Local Redis and PostgreSQL for development, tests and CI.
#
#   scripts/services.sh start    install if missing, start both, wait until they answer
#   scripts/services.sh stop     stop both
#   scripts/services.sh status   print both states; exit 0 only if both are up
#
# Everything lives under .local/ in the repository root (git-ignored):
#   .local/redis/   redis.conf (generated), AOF, pid file, log
#   .local/pg/      data/ (the cluster), sock/ (unix socket), postgres.log
#
# Ports: REDIS_PORT (default 6379), PG_PORT (default 5432); both bound to 127.0.0.1 only.
# PostgreSQL refuses to run as root, so it runs as the system user `flashsale-pg`.
# Idempotent: `start` on running services is a no-op (it re-checks role and database).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
LOCAL="$ROOT/.local"

REDIS_PORT="${REDIS_PORT:-6379}"
PG_PORT="${PG_PORT:-5432}"

REDIS_DIR="$LOCAL/redis"
REDIS_CONF="$REDIS_DIR/redis.conf"
REDIS_PID="$REDIS_DIR/redis.pid"
REDIS_LOG="$REDIS_DIR/redis.log"

PG_OS_USER="flashsale-pg"
PG_DIR="$LOCAL/pg"
PG_DATA="$PG_DIR/data"
PG_SOCK="$PG_DIR/sock"
PG_LOG="$PG_DIR/postgres.log"
PG_MAJOR=15

APP_ROLE="flashsale"
APP_DB="flashsale"

WAIT_SECS="${SERVICES_WAIT_SECS:-60}"

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------
# installation
# ---------------------------------------------------------------------------

APT_UPDATED=0
apt_install() {
  [[ $(id -u) -eq 0 ]] || die "need root to apt-get install $*"
  export DEBIAN_FRONTEND=noninteractive
  if [[ $APT_UPDATED -eq 0 ]]; then
    log "apt-get update"
    apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  # Keep package maintainer scripts from starting system-wide daemons (the Debian
  # packages would start their own redis / postgres cluster on our ports).
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=1
  fi
  log "apt-get install $*"
  local rc=0
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null || rc=$?
  if [[ $created_policy -eq 1 ]]; then rm -f "$policy"; fi
  [[ $rc -eq 0 ]] || die "apt-get install $* failed"
}

ensure_redis_installed() {
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    apt_install redis-server redis-tools
  fi
  # The Debian package may have started (or may start at boot) its own instance.
  stop_system_redis
}

PG_BIN=""
find_pg_bin() {
  local d
  for d in /usr/local/bin "/usr/lib/postgresql/$PG_MAJOR/bin"; do
    if [[ -x $d/initdb && -x $d/pg_ctl && -x $d/postgres ]]; then
      PG_BIN="$d"
      return 0
    fi
  done
  return 1
}

ensure_pg_installed() {
  if ! find_pg_bin; then
    apt_install "postgresql-$PG_MAJOR"
    find_pg_bin || die "PostgreSQL $PG_MAJOR binaries not found after install"
    stop_system_pg
  fi
  if ! command -v psql >/dev/null 2>&1; then
    apt_install postgresql-client
  fi
}

ensure_pg_user() {
  if ! id -u "$PG_OS_USER" >/dev/null 2>&1; then
    log "creating system user $PG_OS_USER"
    useradd --system --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin "$PG_OS_USER"
  fi
}

# Every directory from / down to $1 must be traversable (o+x) by the postgres user.
ensure_traversable() {
  local path="$1" cur=""
  local IFS=/
  local part
  for part in $path; do
    [[ -z $part ]] && continue
    cur="$cur/$part"
    if [[ -d $cur ]] && ! runuser -u "$PG_OS_USER" -- test -x "$cur"; then
      log "chmod o+x $cur (so $PG_OS_USER can reach its data)"
      chmod o+x "$cur"
    fi
  done
}

as_pg() {
  # cwd must be readable by the postgres user, or pg_ctl/postgres complain.
  (cd "$PG_DIR" && runuser -u "$PG_OS_USER" -- "$@")
}

# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------

rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

redis_answers() { [[ $(rcli ping 2>/dev/null || true) == PONG ]]; }

# Our instance = the one whose working directory is $REDIS_DIR.
redis_is_ours() {
  local dir
  dir="$(rcli --raw config get dir 2>/dev/null | sed -n 2p || true)"
  [[ $dir == "$REDIS_DIR" ]]
}

# A process that exists and is not a zombie (this machine's init may not reap
# daemonized children, and kill -0 succeeds on zombies).
pid_alive() {
  local pid="$1" state
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  state="$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$pid/stat" 2>/dev/null || true)"
  [[ -n $state && $state != Z && $state != X ]]
}

redis_pid_alive() {
  [[ -s $REDIS_PID ]] && pid_alive "$(cat "$REDIS_PID")"
}

stop_system_redis() {
  # Debian's instance: pid file /run/redis/redis-server.pid, data /var/lib/redis.
  local sys_pid=/run/redis/redis-server.pid
  if [[ -s $sys_pid ]] && pid_alive "$(cat "$sys_pid")"; then
    log "stopping the system redis-server (pid $(cat "$sys_pid"))"
    service redis-server stop >/dev/null 2>&1 || kill "$(cat "$sys_pid")" 2>/dev/null || true
    local i
    for ((i = 0; i < 50; i++)); do
      pid_alive "$(cat "$sys_pid" 2>/dev/null || echo 0)" || break
      sleep 0.1
    done
  fi
}

write_redis_conf() {
  mkdir -p "$REDIS_DIR"
  cat >"$REDIS_CONF.tmp" <<EOF
# Generated by scripts/services.sh; edits are overwritten on every start.
bind 127.0.0.1
port $REDIS_PORT
protected-mode yes
daemonize yes
pidfile $REDIS_PID
logfile $REDIS_LOG
dir $REDIS_DIR
# tests use one database each
databases 1024
maxclients 10000
tcp-backlog 511
# durability: AOF only, fsync once a second (a crash loses at most ~1 s of writes)
save ""
appendonly yes
appendfsync everysec
appendfilename "appendonly.aof"
# AOF rewrites fork and copy the whole dataset: past 64 MB (the default) a
# checkout crowd (~300 bytes of AOF per checkout) triggers one every few
# seconds, each costing CPU beside the crowd; rewrite once the log has doubled
# and passed 1 GB instead.
auto-aof-rewrite-percentage 100
auto-aof-rewrite-min-size 1gb
# Keys of a sale expire together; free them on a background thread.
lazyfree-lazy-expire yes
EOF
  mv "$REDIS_CONF.tmp" "$REDIS_CONF"
}

redis_start() {
  ensure_redis_installed
  if redis_answers; then
    if redis_is_ours; then
      log "redis already running on 127.0.0.1:$REDIS_PORT"
      return 0
    fi
    log "WARNING: a foreign redis answers on port $REDIS_PORT; shutting it down so ours owns the port"
    rcli shutdown nosave >/dev/null 2>&1 || true
    wait_port_free_redis
  fi
  write_redis_conf
  log "starting redis on 127.0.0.1:$REDIS_PORT (dir $REDIS_DIR)"
  # maxclients 10000 needs ~10032 file descriptors; raise the soft limit if we can.
  (
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    redis-server "$REDIS_CONF"
  ) || die "redis-server failed to start; see $REDIS_LOG"
  local i
  for ((i = 0; i < WAIT_SECS * 10; i++)); do
    if redis_answers; then
      log "redis is up"
      return 0
    fi
    sleep 0.1
  done
  tail -n 20 "$REDIS_LOG" >&2 || true
  die "redis did not answer PING within ${WAIT_SECS}s"
}

wait_port_free_redis() {
  local i
  for ((i = 0; i < 100; i++)); do
    redis_answers || return 0
    sleep 0.1
  done
  die "port $REDIS_PORT is still taken by another redis"
}

redis_stop() {
  if ! command -v redis-cli >/dev/null 2>&1; then
    log "redis not installed"
    return 0
  fi
  if redis_answers && redis_is_ours; then
    log "stopping redis"
    rcli shutdown >/dev/null 2>&1 || true
  elif redis_pid_alive; then
    log "stopping redis (SIGTERM)"
    kill "$(cat "$REDIS_PID")" 2>/dev/null || true
  else
    log "redis not running"
    return 0
  fi
  local i
  for ((i = 0; i < WAIT_SECS * 10; i++)); do
    redis_pid_alive || { log "redis stopped"; return 0; }
    sleep 0.1
  done
  log "redis did not stop in time; killing it"
  kill -9 "$(cat "$REDIS_PID")" 2>/dev/null || true
}

redis_status() {
  if redis_answers && redis_is_ours; then
    echo "redis:    up   127.0.0.1:$REDIS_PORT (pid $(cat "$REDIS_PID" 2>/dev/null || echo '?'), dir $REDIS_DIR)"
    return 0
  elif redis_answers; then
    echo "redis:    FOREIGN instance on 127.0.0.1:$REDIS_PORT (not ours)"
    return 1
  fi
  echo "redis:    down"
  return 1
}

# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------

# True when any PostgreSQL accepts connections on the port (ours or not).
pg_ready() {
  local isready=""
  if [[ -x $PG_BIN/pg_isready ]]; then
    isready="$PG_BIN/pg_isready"
  elif [[ -x /usr/lib/postgresql/$PG_MAJOR/bin/pg_isready ]]; then
    isready="/usr/lib/postgresql/$PG_MAJOR/bin/pg_isready"
  elif command -v pg_isready >/dev/null 2>&1; then
    isready="$(command -v pg_isready)"
  fi
  if [[ -n $isready ]]; then
    "$isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 2
  else
    psql_admin -tAc 'select 1' >/dev/null 2>&1
  fi
}

psql_admin() {
  PGCONNECT_TIMEOUT=5 psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres "$@"
}

pg_is_ours_running() {
  [[ -s $PG_DATA/postmaster.pid ]] || return 1
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1
}

stop_system_pg() {
  # A Debian package install may have created and started cluster $PG_MAJOR/main.
  if command -v pg_lsclusters >/dev/null 2>&1; then
    local ver name port status _rest
    while read -r ver name port status _rest; do
      if [[ $status == online* ]]; then
        log "stopping the system PostgreSQL cluster $ver/$name (port $port)"
        pg_ctlcluster "$ver" "$name" stop -m fast >/dev/null 2>&1 || true
      fi
    done < <(pg_lsclusters -h 2>/dev/null || true)
  fi
}

write_pg_conf() {
  local conf="$PG_DATA/flashsale.conf"
  cat >"$conf.tmp" <<EOF
# Generated by scripts/services.sh; edits are overwritten on every start.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCK'
max_connections = 300
shared_buffers = 256MB
fsync = on
EOF
  chown "$PG_OS_USER:" "$conf.tmp"
  mv "$conf.tmp" "$conf"
  if ! grep -q "^include_if_exists = 'flashsale.conf'" "$PG_DATA/postgresql.conf"; then
    echo "include_if_exists = 'flashsale.conf'" >>"$PG_DATA/postgresql.conf"
  fi
}

pg_init() {
  if [[ -f $PG_DATA/PG_VERSION ]]; then
    return 0
  fi
  if [[ -d $PG_DATA ]]; then
    log "removing incomplete data directory $PG_DATA"
    rm -rf "$PG_DATA"
  fi
  log "initdb $PG_DATA"
  as_pg "$PG_BIN/initdb" -D "$PG_DATA" -A trust -U postgres --encoding=UTF8 --locale=C >"$PG_DIR/initdb.log" 2>&1 ||
    { cat "$PG_DIR/initdb.log" >&2; die "initdb failed"; }
}

pg_setup_roles() {
  psql_admin <<SQL
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$APP_ROLE') THEN
    CREATE ROLE $APP_ROLE LOGIN CREATEDB;
  ELSE
    ALTER ROLE $APP_ROLE LOGIN CREATEDB;
  END IF;
END
\$\$;
SELECT 'CREATE DATABASE $APP_DB OWNER $APP_ROLE ENCODING ''UTF8'''
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$APP_DB')
\gexec
SQL
}

pg_start() {
  ensure_pg_installed
  ensure_pg_user
  mkdir -p "$LOCAL"
  chmod 755 "$LOCAL"
  mkdir -p "$PG_DIR" "$PG_SOCK"
  chown "$PG_OS_USER:" "$PG_DIR" "$PG_SOCK"
  chmod 700 "$PG_DIR"
  chmod 755 "$PG_SOCK"
  ensure_traversable "$PG_DIR"
  # unix socket paths are limited to 107 bytes
  if ((${#PG_SOCK} + 20 > 107)); then
    die "socket path $PG_SOCK is too long for a unix socket; move the repository to a shorter path"
  fi
  # a data directory copied from elsewhere may carry another owner
  if [[ -d $PG_DATA ]] && [[ $(stat -c %U "$PG_DATA") != "$PG_OS_USER" ]]; then
    chown -R "$PG_OS_USER:" "$PG_DATA"
  fi

  if pg_is_ours_running; then
    log "postgres already running on 127.0.0.1:$PG_PORT"
  else
    if pg_ready; then
      stop_system_pg
      sleep 0.5
      pg_ready && die "port $PG_PORT is taken by a PostgreSQL that is not ours (data dir is not $PG_DATA); stop it or set PG_PORT"
    fi
    pg_init
    write_pg_conf
    log "starting postgres on 127.0.0.1:$PG_PORT (data $PG_DATA)"
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t "$WAIT_SECS" start >/dev/null ||
      { tail -n 30 "$PG_LOG" >&2 || true; die "pg_ctl start failed; see $PG_LOG"; }
  fi
  local i
  for ((i = 0; i < WAIT_SECS * 10; i++)); do
    if pg_ready; then
      pg_setup_roles
      log "postgres is up"
      return 0
    fi
    sleep 0.1
  done
  tail -n 30 "$PG_LOG" >&2 || true
  die "postgres did not become ready within ${WAIT_SECS}s"
}

pg_stop() {
  if ! find_pg_bin || ! id -u "$PG_OS_USER" >/dev/null 2>&1 || [[ ! -d $PG_DATA ]]; then
    log "postgres not set up"
    return 0
  fi
  if pg_is_ours_running; then
    log "stopping postgres"
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t "$WAIT_SECS" stop >/dev/null
    log "postgres stopped"
  else
    log "postgres not running"
  fi
}

pg_status() {
  if find_pg_bin && id -u "$PG_OS_USER" >/dev/null 2>&1 && [[ -d $PG_DATA ]] && pg_is_ours_running && pg_ready; then
    echo "postgres: up   127.0.0.1:$PG_PORT (pid $(head -n1 "$PG_DATA/postmaster.pid"), data $PG_DATA)"
    return 0
  fi
  echo "postgres: down"
  return 1
}

print_urls() {
  echo "REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
  echo "DATABASE_URL=postgres://$APP_ROLE@127.0.0.1:$PG_PORT/$APP_DB"
}

# ---------------------------------------------------------------------------

usage() { echo "usage: $0 start|stop|status" >&2; exit 2; }

[[ $# -eq 1 ]] || usage
case "$1" in
  start)
    [[ $(id -u) -eq 0 ]] || die "run as root (PostgreSQL runs as the dedicated user $PG_OS_USER)"
    redis_start
    pg_start
    print_urls
    ;;
  stop)
    redis_stop
    pg_stop
    ;;
  status)
    rc=0
    redis_status || rc=1
    pg_status || rc=1
    exit "$rc"
    ;;
  *) usage ;;
esac
