#!/usr/bin/env bash
# PostgreSQL for the store's test suite. Sourced by .ci/run (may also be run directly):
#   installs Debian's `postgresql` if missing (needs root and the package registry),
#   starts a private cluster on 127.0.0.1 (its own data dir and port, not Debian's "main"),
#   creates a role and a database, and exports DSSM_TEST_PG_URL=postgresql+psycopg://...
# Safe to source twice (a running cluster is reused). Returns non-zero, never exits the
# caller, when something fails: the Postgres tests then skip with a message.
# Knobs: DSSM_PG_PORT (default 54329), DSSM_PG_DIR (default /tmp/dssm-pg-$DSSM_PG_PORT).

_dssm_pg_setup() {
  local port="${DSSM_PG_PORT:-54329}"
  local dir="${DSSM_PG_DIR:-/tmp/dssm-pg-${port}}"
  local role="dssm" password="dssm" db="dssm_test"
  local bin="" as=()

  if ! ls -d /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    if [ "$(id -u)" != "0" ]; then
      echo "postgres.sh: postgresql is not installed and we are not root" >&2
      return 1
    fi
    echo "postgres.sh: installing postgresql (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || { echo "postgres.sh: apt-get update failed" >&2; return 1; }
    apt-get install -y -qq postgresql >/dev/null \
      || { echo "postgres.sh: apt-get install postgresql failed" >&2; return 1; }
  fi
  bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    echo "postgres.sh: no initdb under /usr/lib/postgresql/*/bin" >&2
    return 1
  fi

  # initdb and the server refuse to run as root: use the postgres account when we are root.
  if [ "$(id -u)" = "0" ]; then
    if ! id postgres >/dev/null 2>&1; then
      echo "postgres.sh: running as root but there is no 'postgres' user" >&2
      return 1
    fi
    as=(runuser -u postgres -- env -C /)  # from /, which the postgres user can read
  fi

  mkdir -p "$dir" || return 1
  if [ "$(id -u)" = "0" ]; then chown postgres:postgres "$dir" || return 1; fi
  chmod 700 "$dir" || return 1

  if [ ! -f "$dir/PG_VERSION" ]; then
    local pwfile="$dir.pw"
    printf '%s\n' "postgres-ci" > "$pwfile" || return 1
    [ "$(id -u)" = "0" ] && chown postgres "$pwfile"
    if ! "${as[@]}" "$bin/initdb" -D "$dir" -U postgres --pwfile="$pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$dir.initdb.log" 2>&1; then
      echo "postgres.sh: initdb failed:" >&2
      tail -n 20 "$dir.initdb.log" >&2
      rm -f "$pwfile"
      return 1
    fi
    rm -f "$pwfile"
  fi

  if ! "${as[@]}" "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
    if ! "${as[@]}" "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off" start >/dev/null; then
      echo "postgres.sh: the server did not start:" >&2
      tail -n 20 "$dir/server.log" >&2
      return 1
    fi
  fi

  local psql=("${as[@]}" "$bin/psql" -h "$dir" -p "$port" -U postgres -d postgres -qtA
              -v ON_ERROR_STOP=1)
  if [ "$("${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname = '$role'")" != "1" ]; then
    "${psql[@]}" -c "CREATE ROLE $role LOGIN PASSWORD '$password'" >/dev/null || return 1
  fi
  if [ "$("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" != "1" ]; then
    "${psql[@]}" -c "CREATE DATABASE $db OWNER $role" >/dev/null || return 1
  fi

  export DSSM_TEST_PG_URL="postgresql+psycopg://$role:$password@127.0.0.1:$port/$db"
  echo "postgres.sh: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port" \
       "(data $dir); DSSM_TEST_PG_URL exported"
}

_dssm_pg_setup
_dssm_pg_status=$?
unset -f _dssm_pg_setup
# `return` works when sourced; `exit` when run as a script.
return "$_dssm_pg_status" 2>/dev/null || exit "$_dssm_pg_status"
