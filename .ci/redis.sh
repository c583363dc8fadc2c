#!/usr/bin/env bash
# Redis for the serving tests. Sourced by .ci/run (may also be run directly):
#   installs Debian's `redis-server` if missing (needs root and the package registry),
#   starts a private server on 127.0.0.1 (its own port and folder, no persistence, not the
#   system's instance), and exports DSSM_TEST_REDIS_URL=redis://127.0.0.1:PORT/0.
# Safe to source twice (a server answering on the port is reused). Returns non-zero, never
# exits the caller, when something fails: the Redis tests then skip with a message.
# Knobs: DSSM_REDIS_PORT (default 56379), DSSM_REDIS_DIR (default /tmp/dssm-redis-$PORT).

_dssm_redis_setup() {
  local port="${DSSM_REDIS_PORT:-56379}"
  local dir="${DSSM_REDIS_DIR:-/tmp/dssm-redis-${port}}"
  local server
  server="$(command -v redis-server || true)"
  if [ -z "$server" ]; then
    if [ "$(id -u)" != "0" ]; then
      echo "redis.sh: redis-server is not installed and we are not root" >&2
      return 1
    fi
    echo "redis.sh: installing redis-server (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || { echo "redis.sh: apt-get update failed" >&2; return 1; }
    apt-get install -y -qq redis-server >/dev/null \
      || { echo "redis.sh: apt-get install redis-server failed" >&2; return 1; }
    server="$(command -v redis-server || true)"
    [ -n "$server" ] || { echo "redis.sh: no redis-server after install" >&2; return 1; }
  fi
  local cli
  cli="$(command -v redis-cli || true)"
  _dssm_redis_up() {
    if [ -n "$cli" ]; then
      [ "$("$cli" -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = "PONG" ]
    else
      (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
    fi
  }
  if ! _dssm_redis_up; then
    mkdir -p "$dir" || return 1
    "$server" --bind 127.0.0.1 --port "$port" --dir "$dir" --save "" --appendonly no \
      --protected-mode yes --daemonize yes --pidfile "$dir/redis.pid" \
      --logfile "$dir/redis.log" || { echo "redis.sh: redis-server did not start" >&2; return 1; }
    local i
    for i in $(seq 1 50); do _dssm_redis_up && break; sleep 0.1; done
    _dssm_redis_up || { echo "redis.sh: no answer on 127.0.0.1:$port (see $dir/redis.log)" >&2; return 1; }
  fi
  export DSSM_TEST_REDIS_URL="redis://127.0.0.1:${port}/0"
  echo "redis.sh: $("$server" --version | cut -d' ' -f1-3) on 127.0.0.1:$port (dir $dir); DSSM_TEST_REDIS_URL exported"
}

_dssm_redis_setup
