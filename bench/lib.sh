#!/usr/bin/env bash
# Shell functions the bench scripts share; sourced, not run:
#   . "$ROOT/bench/lib.sh"

# json_field JSON KEY: prints the top-level field KEY of the JSON object.
json_field() {
  python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"
}

# wait_active_sale BASE_URL SERVER_PID: waits up to 60 s for a server that was
# just started until GET BASE_URL/sales/active answers, and prints the body.
# Returns 1 (printing nothing) when the server exits first or nothing answers
# in time; the caller says why, pointing at its log.
wait_active_sale() {
  local url=$1 pid=$2 active="" i
  for ((i = 0; i < 600; i++)); do
    kill -0 "$pid" 2>/dev/null || return 1
    active="$(curl -fsS --max-time 2 "$url/sales/active" 2>/dev/null || true)"
    if [[ -n $active ]]; then
      printf '%s\n' "$active"
      return 0
    fi
    sleep 0.1
  done
  return 1
}

# cpu_ticks PID: the process's CPU time so far (user + system, clock ticks);
# 0 when it is gone.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# port_listening PORT: true when something listens on the TCP port.
port_listening() { ss -ltnH "sport = :$1" 2>/dev/null | grep -q .; }

# free_redis_port: prints the first port from 6390 up that nothing listens on.
free_redis_port() {
  local port
  for ((port = 6390; port < 6999; port++)); do
    if ! port_listening "$port"; then
      echo "$port"
      return 0
    fi
  done
  return 1
}

# stop_process PID: SIGTERM, up to 30 s to exit, then SIGKILL; reaps it when
# it is the caller's child. No PID, or one already gone: nothing.
stop_process() {
  local pid=${1:-} i
  [[ -n $pid ]] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# private_redis_start DIR PORT [AOF]: starts a redis-server of the caller's own
# on 127.0.0.1:PORT, its configuration, data and log in DIR, with the settings
# of every Redis the project starts (redis_tuning_conf: AOF everysec, ...), or
# without AOF when AOF is 0, and waits until it answers. Sets REDIS_PID (stop
# it with stop_process). Returns 1, saying why on stderr, when it exits or does
# not answer within 10 s.
private_redis_start() {
  local dir=$1 port=$2 aof=${3:-1} i
  # shellcheck source=scripts/lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
  {
    echo "port $port"
    echo "bind 127.0.0.1"
    echo "dir $dir"
    redis_tuning_conf
    [[ $aof == 1 ]] || echo "appendonly no"
  } >"$dir/redis.conf"
  redis-server "$dir/redis.conf" >"$dir/redis.log" 2>&1 &
  REDIS_PID=$!
  for ((i = 0; i < 100; i++)); do
    [[ $(redis-cli -p "$port" ping 2>/dev/null) == PONG ]] && return 0
    kill -0 "$REDIS_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "redis-server on port $port did not answer: $(tail -n 5 "$dir/redis.log")" >&2
  return 1
}
