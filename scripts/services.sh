#!/usr/bin/env bash
# Local Redis and PostgreSQL for development, tests and CI.
#
#   scripts/services.sh start    install if missing, start both, wait until they answer
#                                (also installs faketime, which tests/clock.rs needs)
#   scripts/services.sh stop     stop both
#   scripts/services.sh status   print both states; exit 0 only if both are up
#
# A local Redis Cluster (3 masters with one replica each), separate from the
# single-node Redis above and untouched by start/stop/status:
#   scripts/services.sh cluster-start    start the nodes, form the cluster (or repair
#                                        it), wait until it is ok with every replica
#                                        attached; prints REDIS_URL (the seed list)
#   scripts/services.sh cluster-stop     stop every node (data kept)
#   scripts/services.sh cluster-status   one line per node; exit 0 only if healthy
#   scripts/services.sh cluster-reset    stop every node and remove its data
#
# Everything lives under .local/ in the repository root (git-ignored):
#   .local/redis/          redis.conf (generated), AOF, pid file, log
#   .local/pg/             data/ (the cluster), sock/ (unix socket), postgres.log
#   .local/redis-cluster/  one directory per node port: redis.conf, nodes.conf,
#                          AOF, pid file, log
#
# Ports: REDIS_PORT (default 6379), PG_PORT (default 5432); both bound to 127.0.0.1 only.
# Cluster nodes: REDIS_CLUSTER_PORTS, a range or a comma list of an even number (>= 6)
# of ports (default 7000-7005; each node also takes its port + 10000 for the cluster
# bus); REDIS_CLUSTER_NODE_TIMEOUT_MS (default 2000, so that a failover takes seconds).
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
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

# ---------------------------------------------------------------------------
# installation
# ---------------------------------------------------------------------------


ensure_redis_installed() {
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    apt_install redis-server redis-tools || die "cannot install redis-server redis-tools"
  fi
  # The Debian package may have started (or may start at boot) its own instance.
  stop_system_redis
}

# libfaketime, for the tests that run an instance with its clock off
# (tests/clock.rs preloads its libfaketimeMT.so.1).
ensure_faketime_installed() {
  if ! command -v faketime >/dev/null 2>&1; then
    apt_install faketime || die "cannot install faketime"
  fi
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
    apt_install "postgresql-$PG_MAJOR" || die "cannot install postgresql-$PG_MAJOR"
    find_pg_bin || die "PostgreSQL $PG_MAJOR binaries not found after install"
    stop_system_pg
  fi
  if ! command -v psql >/dev/null 2>&1; then
    apt_install postgresql-client || die "cannot install postgresql-client"
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
$(redis_tuning_conf)
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
    # Debian's own instance was stopped above; anything else on the port is
    # somebody's data (another checkout's services, a developer's Redis): never
    # shut it down, refuse like Postgres and the cluster nodes do.
    local dir
    dir="$(rcli --raw config get dir 2>/dev/null | sed -n 2p || true)"
    die "port $REDIS_PORT is taken by a redis that is not ours (dir ${dir:-unknown}, ours is $REDIS_DIR); stop it or set REDIS_PORT"
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

# ---------------------------------------------------------------------------
# Redis Cluster (cluster-start / cluster-stop / cluster-status / cluster-reset)
# ---------------------------------------------------------------------------

CLUSTER_DIR="$LOCAL/redis-cluster"
CLUSTER_NODE_TIMEOUT_MS="${REDIS_CLUSTER_NODE_TIMEOUT_MS:-2000}"
CLUSTER_PORTS=()
# Set by cluster_healthy when it returns 1: what is wrong, for the user.
CLUSTER_PROBLEM=""

parse_cluster_ports() {
  local spec="${REDIS_CLUSTER_PORTS:-7000-7005}" p seen=" "
  CLUSTER_PORTS=()
  if [[ $spec =~ ^([0-9]+)-([0-9]+)$ ]]; then
    for ((p = BASH_REMATCH[1]; p <= BASH_REMATCH[2]; p++)); do CLUSTER_PORTS+=("$p"); done
  elif [[ $spec =~ ^[0-9]+(,[0-9]+)*$ ]]; then
    IFS=, read -r -a CLUSTER_PORTS <<<"$spec"
  else
    die "REDIS_CLUSTER_PORTS=$spec: expected a range (7000-7005) or a comma list (7000,7001,...)"
  fi
  local n=${#CLUSTER_PORTS[@]}
  ((n >= 6 && n % 2 == 0)) ||
    die "REDIS_CLUSTER_PORTS=$spec names $n ports; the cluster needs an even number >= 6 (at least 3 masters, one replica each)"
  for p in "${CLUSTER_PORTS[@]}"; do
    ((p >= 1024 && p + 10000 <= 65535)) || die "cluster port $p out of range (1024..55535: the bus port is port + 10000)"
    [[ $seen != *" $p "* ]] || die "REDIS_CLUSTER_PORTS=$spec names port $p twice"
    ((p != REDIS_PORT && p != PG_PORT && p + 10000 != REDIS_PORT && p + 10000 != PG_PORT)) ||
      die "cluster port $p (or its bus port $((p + 10000))) collides with REDIS_PORT or PG_PORT"
    seen="$seen$p "
  done
}

ensure_redis_cluster_tools() {
  # Only install: unlike `start`, the cluster leaves any other redis-server alone.
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    apt_install redis-server redis-tools || die "cannot install redis-server redis-tools"
  fi
}

node_dir() { echo "$CLUSTER_DIR/$1"; }
node_pid_file() { echo "$CLUSTER_DIR/$1/redis.pid"; }
ncli() {
  local port="$1"
  shift
  redis-cli -h 127.0.0.1 -p "$port" "$@"
}
node_answers() { [[ $(ncli "$1" ping 2>/dev/null || true) == PONG ]]; }
node_is_ours() {
  local dir
  dir="$(ncli "$1" --raw config get dir 2>/dev/null | sed -n 2p || true)"
  [[ $dir == "$(node_dir "$1")" ]]
}
node_pid() { cat "$(node_pid_file "$1")" 2>/dev/null || true; }
# The pid file's process is alive and still a redis-server (a kill -9 leaves the
# file behind, and its pid may be reused).
node_pid_alive() {
  local pid
  pid="$(node_pid "$1")"
  pid_alive "$pid" && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == redis-server ]]
}
# Something accepts connections on 127.0.0.1:$1 (whatever it is).
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# One field of a node's CLUSTER INFO or INFO <section> (CRs stripped).
cluster_info_field() { ncli "$1" cluster info 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"; }
info_field() { ncli "$1" info "$2" 2>/dev/null | tr -d '\r' | sed -n "s/^$3://p"; }
# The node's own line of CLUSTER NODES: id addr flags master-id ping pong epoch link slots...
node_self_line() { ncli "$1" cluster nodes 2>/dev/null | tr -d '\r' | grep -m1 ' myself' || true; }

write_node_conf() {
  local port="$1" dir
  dir="$(node_dir "$port")"
  mkdir -p "$dir"
  cat >"$dir/redis.conf.tmp" <<EOF
# Generated by scripts/services.sh; edits are overwritten on every cluster-start.
bind 127.0.0.1
port $port
protected-mode yes
daemonize yes
dir $dir
pidfile $dir/redis.pid
logfile $dir/redis.log
cluster-enabled yes
# the node's view of the cluster, rewritten by redis itself
cluster-config-file nodes.conf
# a master unreachable this long is failed over to its replica
cluster-node-timeout $CLUSTER_NODE_TIMEOUT_MS
$(redis_tuning_conf)
EOF
  mv "$dir/redis.conf.tmp" "$dir/redis.conf"
}

start_node() {
  local port="$1" dir
  dir="$(node_dir "$port")"
  write_node_conf "$port"
  log "starting cluster node 127.0.0.1:$port (dir $dir)"
  (
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    redis-server "$dir/redis.conf"
  ) || die "redis-server failed to start on port $port; see $dir/redis.log"
}

# Up to $1 seconds for every node to answer PING (a node loading its AOF answers LOADING).
wait_nodes_answer() {
  local deadline=$((SECONDS + $1)) port all
  while ((SECONDS < deadline)); do
    all=1
    for port in "${CLUSTER_PORTS[@]}"; do
      node_answers "$port" || { all=0; break; }
    done
    [[ $all -eq 1 ]] && return 0
    sleep 0.1
  done
  for port in "${CLUSTER_PORTS[@]}"; do
    node_answers "$port" || { tail -n 20 "$(node_dir "$port")/redis.log" >&2 || true; die "cluster node 127.0.0.1:$port did not answer PING within ${1}s"; }
  done
}

# 0 when every node says cluster_state:ok, knows exactly the configured nodes, all
# 16384 slots are served by N/2 masters and each master has a replica whose link is
# up. Otherwise 1, with CLUSTER_PROBLEM saying what is wrong.
cluster_healthy() {
  local n=${#CLUSTER_PORTS[@]} port state known slots role
  local masters=0 replicas=0
  for port in "${CLUSTER_PORTS[@]}"; do
    if ! node_answers "$port"; then
      CLUSTER_PROBLEM="node 127.0.0.1:$port is down"
      return 1
    fi
    state="$(cluster_info_field "$port" cluster_state)"
    known="$(cluster_info_field "$port" cluster_known_nodes)"
    slots="$(cluster_info_field "$port" cluster_slots_ok)"
    if [[ $state != ok ]]; then
      CLUSTER_PROBLEM="node 127.0.0.1:$port says cluster_state:${state:-?}"
      return 1
    fi
    if [[ $known != "$n" ]]; then
      CLUSTER_PROBLEM="node 127.0.0.1:$port knows ${known:-?} nodes, not $n"
      return 1
    fi
    if [[ $slots != 16384 ]]; then
      CLUSTER_PROBLEM="node 127.0.0.1:$port sees ${slots:-?} of 16384 slots ok"
      return 1
    fi
    role="$(info_field "$port" replication role)"
    if [[ $role == master ]]; then
      if ! node_self_line "$port" | awk 'NF < 9 { exit 1 }'; then
        CLUSTER_PROBLEM="node 127.0.0.1:$port is a master without slots (it should be a replica)"
        return 1
      fi
      if [[ $(info_field "$port" replication connected_slaves) -lt 1 ]]; then
        CLUSTER_PROBLEM="master 127.0.0.1:$port has no replica attached"
        return 1
      fi
      masters=$((masters + 1))
    else
      if [[ $(info_field "$port" replication master_link_status) != up ]]; then
        CLUSTER_PROBLEM="replica 127.0.0.1:$port has its link to its master down"
        return 1
      fi
      replicas=$((replicas + 1))
    fi
  done
  if ((masters != n / 2 || replicas != n / 2)); then
    CLUSTER_PROBLEM="$masters masters and $replicas replicas, expected $((n / 2)) of each"
    return 1
  fi
  CLUSTER_PROBLEM=""
  return 0
}

wait_cluster_healthy() {
  local deadline=$((SECONDS + $1))
  while ((SECONDS < deadline)); do
    cluster_healthy && return 0
    sleep 0.1
  done
  return 1
}

# Every node knows only itself and has no slot: nothing was ever formed (or all was reset).
cluster_is_fresh() {
  local port
  for port in "${CLUSTER_PORTS[@]}"; do
    [[ $(cluster_info_field "$port" cluster_known_nodes) == 1 && $(cluster_info_field "$port" cluster_slots_assigned) == 0 ]] || return 1
  done
}

# Some node knows only itself (its data was removed, or it was reset): it will not
# find the others by itself.
cluster_has_loner() {
  local port
  for port in "${CLUSTER_PORTS[@]}"; do
    [[ $(cluster_info_field "$port" cluster_known_nodes) == 1 ]] && return 0
  done
  return 1
}

cluster_create() {
  local port addrs=()
  for port in "${CLUSTER_PORTS[@]}"; do
    if [[ $(ncli "$port" dbsize 2>/dev/null) != 0 ]]; then
      die "node 127.0.0.1:$port holds keys but belongs to no cluster; cannot form one (scripts/services.sh cluster-reset removes the nodes' data)"
    fi
    addrs+=("127.0.0.1:$port")
  done
  log "forming the cluster: $((${#addrs[@]} / 2)) masters with one replica each"
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$CLUSTER_DIR/create.log" 2>&1 ||
    { cat "$CLUSTER_DIR/create.log" >&2; die "redis-cli --cluster create failed"; }
}

# Brings nodes that lost their way back into the one cluster: forgets node ids that
# no configured node has any more (a node whose data was removed comes back with a
# new id), introduces every node to the first, assigns uncovered slots, and makes
# masters without slots replicas of masters without a replica.
cluster_repair() {
  local port id first="${CLUSTER_PORTS[0]}" live=" " n=${#CLUSTER_PORTS[@]} n_ok
  log "cluster not healthy ($CLUSTER_PROBLEM); repairing"
  for port in "${CLUSTER_PORTS[@]}"; do
    live="$live$(ncli "$port" cluster myid | tr -d '\r') "
  done
  # A replica whose master's id is lost (that node's data was removed: it can never
  # come back) takes over its master's slots at once, without a vote. Waiting for
  # an ordinary failover would be in vain when a fresh node already answers on the
  # old address: the others mark the old id "noaddr" and never fail it.
  local self master_id deadline
  for port in "${CLUSTER_PORTS[@]}"; do
    self="$(node_self_line "$port")"
    [[ $self == *slave* ]] || continue
    master_id="$(awk '{ print $4 }' <<<"$self")"
    [[ $live == *" $master_id "* ]] && continue
    log "node 127.0.0.1:$port: its master $master_id is gone; taking over its slots (CLUSTER FAILOVER TAKEOVER)"
    ncli "$port" cluster failover takeover >/dev/null
    deadline=$((SECONDS + WAIT_SECS))
    while [[ $(info_field "$port" replication role) != master ]] && ((SECONDS < deadline)); do sleep 0.1; done
  done
  for port in "${CLUSTER_PORTS[@]}"; do
    for id in $(ncli "$port" cluster nodes | tr -d '\r' | awk '{ print $1 }'); do
      if [[ $live != *" $id "* ]]; then
        log "node 127.0.0.1:$port: forgetting $id (no configured node has that id any more)"
        ncli "$port" cluster forget "$id" >/dev/null 2>&1 || true
      fi
    done
  done
  for port in "${CLUSTER_PORTS[@]:1}"; do
    ncli "$port" cluster meet 127.0.0.1 "$first" >/dev/null
  done
  deadline=$((SECONDS + WAIT_SECS))
  while ((SECONDS < deadline)); do
    n_ok=1
    for port in "${CLUSTER_PORTS[@]}"; do
      [[ $(cluster_info_field "$port" cluster_known_nodes) == "$n" ]] || { n_ok=0; break; }
    done
    [[ $n_ok -eq 1 ]] && break
    sleep 0.1
  done
  if [[ $(cluster_info_field "$first" cluster_slots_assigned) != 16384 ]]; then
    log "assigning uncovered slots (redis-cli --cluster fix)"
    # (--cluster-yes does not answer its question about covering empty slots)
    { yes yes || true; } | redis-cli --cluster fix "127.0.0.1:$first" --cluster-yes >"$CLUSTER_DIR/fix.log" 2>&1 ||
      { cat "$CLUSTER_DIR/fix.log" >&2; die "redis-cli --cluster fix failed"; }
  fi
  # masters that own slots and have no replica, by id
  local orphans=() line
  while read -r line; do
    orphans+=("$line")
  done < <(ncli "$first" cluster nodes | tr -d '\r' | awk '
    $3 ~ /master/ && $3 !~ /fail/ && NF >= 9 { has_slots[$1] = 1 }
    $3 ~ /slave/ && $3 !~ /fail/ { replicated[$4] = 1 }
    END { for (id in has_slots) if (!(id in replicated)) print id }')
  for port in "${CLUSTER_PORTS[@]}"; do
    ((${#orphans[@]} > 0)) || break
    if [[ $(info_field "$port" replication role) == master ]] && node_self_line "$port" | awk 'NF >= 9 { exit 1 }'; then
      log "node 127.0.0.1:$port: master without slots becomes the replica of ${orphans[0]}"
      ncli "$port" cluster replicate "${orphans[0]}" >/dev/null ||
        die "node 127.0.0.1:$port refused CLUSTER REPLICATE (holds keys?); scripts/services.sh cluster-reset rebuilds the cluster from scratch"
      orphans=("${orphans[@]:1}")
    fi
  done
}

cluster_start() {
  parse_cluster_ports
  ensure_redis_cluster_tools
  mkdir -p "$CLUSTER_DIR"
  local port started=0
  for port in "${CLUSTER_PORTS[@]}"; do
    if node_answers "$port"; then
      node_is_ours "$port" ||
        die "a redis that is not ours answers on 127.0.0.1:$port; stop it or choose other ports with REDIS_CLUSTER_PORTS"
      continue
    fi
    if node_pid_alive "$port"; then
      log "cluster node 127.0.0.1:$port is starting (pid $(node_pid "$port"))"
      continue
    fi
    port_taken "$port" && die "port $port is taken by another process; choose other ports with REDIS_CLUSTER_PORTS"
    port_taken "$((port + 10000))" && die "cluster bus port $((port + 10000)) is taken by another process; choose other ports with REDIS_CLUSTER_PORTS"
    start_node "$port"
    started=$((started + 1))
  done
  wait_nodes_answer "$WAIT_SECS"
  if [[ $started -eq 0 ]] && cluster_healthy; then
    log "redis cluster already running (${CLUSTER_PORTS[*]})"
    return 0
  fi
  if cluster_is_fresh; then
    cluster_create
  elif cluster_has_loner; then
    cluster_healthy || CLUSTER_PROBLEM="a node knows only itself"
    cluster_repair
  elif ! wait_cluster_healthy $((CLUSTER_NODE_TIMEOUT_MS * 5 / 1000 + 5)); then
    # Nodes that were formed once find each other again by themselves (nodes.conf),
    # and a failover settles within a few node timeouts: repair only what is still
    # wrong after that.
    cluster_repair
  fi
  if ! wait_cluster_healthy "$WAIT_SECS"; then
    cluster_status >&2 || true
    die "redis cluster not healthy within ${WAIT_SECS}s: $CLUSTER_PROBLEM (scripts/services.sh cluster-reset removes the nodes' data; cluster-start then forms a new cluster)"
  fi
  log "redis cluster is up"
}

# Replicas first, so that no replica is promoted while its master stops.
cluster_stop() {
  parse_cluster_ports
  if ! command -v redis-cli >/dev/null 2>&1; then
    log "redis not installed"
    return 0
  fi
  local port pass role running=0
  for port in "${CLUSTER_PORTS[@]}"; do
    node_pid_alive "$port" && running=1
  done
  if [[ $running -eq 0 ]]; then
    log "redis cluster not running"
    return 0
  fi
  for pass in slave master; do
    for port in "${CLUSTER_PORTS[@]}"; do
      node_answers "$port" && node_is_ours "$port" || continue
      role="$(info_field "$port" replication role)"
      [[ $role == "$pass" ]] || continue
      log "stopping cluster node 127.0.0.1:$port ($role)"
      ncli "$port" shutdown >/dev/null 2>&1 || true
    done
  done
  for port in "${CLUSTER_PORTS[@]}"; do
    if node_pid_alive "$port"; then
      if node_answers "$port" && node_is_ours "$port"; then
        ncli "$port" shutdown >/dev/null 2>&1 || true
      elif ! node_answers "$port"; then
        kill "$(node_pid "$port")" 2>/dev/null || true
      fi
    fi
  done
  local alive deadline=$((SECONDS + WAIT_SECS))
  while ((SECONDS < deadline)); do
    alive=0
    for port in "${CLUSTER_PORTS[@]}"; do
      node_pid_alive "$port" && alive=1
    done
    [[ $alive -eq 0 ]] && { log "redis cluster stopped"; return 0; }
    sleep 0.1
  done
  for port in "${CLUSTER_PORTS[@]}"; do
    if node_pid_alive "$port"; then
      log "cluster node 127.0.0.1:$port did not stop in time; killing it"
      kill -9 "$(node_pid "$port")" 2>/dev/null || true
    fi
  done
}

cluster_reset() {
  cluster_stop
  if [[ -d $CLUSTER_DIR ]]; then
    log "removing $CLUSTER_DIR"
    rm -rf "$CLUSTER_DIR"
  fi
}

# One line per node (role, pid, slots or master), then exit 0 only if healthy.
cluster_status() {
  parse_cluster_ports
  local port line flags master_id slots pid up=0 ids
  for port in "${CLUSTER_PORTS[@]}"; do
    if node_answers "$port"; then up=$((up + 1)); fi
  done
  if [[ $up -eq 0 ]]; then
    echo "redis-cluster: down (${CLUSTER_PORTS[*]})"
    return 1
  fi
  local rc=0
  if cluster_healthy; then
    echo "redis-cluster: up   $(( ${#CLUSTER_PORTS[@]} / 2 )) masters, $(( ${#CLUSTER_PORTS[@]} / 2 )) replicas, cluster_state:ok (dir $CLUSTER_DIR)"
  else
    echo "redis-cluster: NOT HEALTHY: $CLUSTER_PROBLEM (dir $CLUSTER_DIR)"
    rc=1
  fi
  for port in "${CLUSTER_PORTS[@]}"; do
    pid="$(node_pid "$port")"
    if ! node_answers "$port"; then
      echo "  127.0.0.1:$port  down"
      continue
    fi
    if ! node_is_ours "$port"; then
      echo "  127.0.0.1:$port  FOREIGN (not ours)"
      continue
    fi
    ids="$(ncli "$port" cluster nodes | tr -d '\r')"
    line="$(grep -m1 ' myself' <<<"$ids" || true)"
    read -r _ _ flags master_id _ _ _ _ slots <<<"$line"
    if [[ $flags == *master* ]]; then
      echo "  127.0.0.1:$port  master   pid ${pid:-?}  slots ${slots:-none}"
    else
      local master_addr link
      master_addr="$(awk -v id="$master_id" '$1 == id { sub(/@.*/, "", $2); print $2 }' <<<"$ids")"
      link="$(info_field "$port" replication master_link_status)"
      echo "  127.0.0.1:$port  replica  pid ${pid:-?}  of ${master_addr:-?} (link ${link:-?})"
    fi
  done
  return "$rc"
}

print_cluster_url() {
  local port urls=()
  for port in "${CLUSTER_PORTS[@]}"; do urls+=("redis://127.0.0.1:$port"); done
  local IFS=,
  echo "REDIS_URL=${urls[*]}"
}

print_urls() {
  echo "REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
  echo "DATABASE_URL=postgres://$APP_ROLE@127.0.0.1:$PG_PORT/$APP_DB"
}

# ---------------------------------------------------------------------------

usage() { echo "usage: $0 start|stop|status|cluster-start|cluster-stop|cluster-status|cluster-reset" >&2; exit 2; }

[[ $# -eq 1 ]] || usage
case "$1" in
  start)
    [[ $(id -u) -eq 0 ]] || die "run as root (PostgreSQL runs as the dedicated user $PG_OS_USER)"
    redis_start
    pg_start
    ensure_faketime_installed
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
  cluster-start)
    cluster_start
    print_cluster_url
    ;;
  cluster-stop) cluster_stop ;;
  cluster-status) cluster_status ;;
  cluster-reset) cluster_reset ;;
  *) usage ;;
esac
