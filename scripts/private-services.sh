# Sourced by the test command. `ensure_test_services` makes sure the tests have a Postgres and a
# Redis: TEST_DATABASE_URL / TEST_REDIS_URL when given (they must answer), else the defaults
# (127.0.0.1:5432, 127.0.0.1:6379) when they answer, else a private Postgres (initdb, on a free
# port, as the postgres user when run as root) and a private Redis (no persistence) in a
# temporary folder, exported as TEST_DATABASE_URL / TEST_REDIS_URL. TEST_SERVICES=private starts
# the private ones whatever answers. `stop_private_services` stops them and removes the folder.

private_services_dir=""
private_redis_pid=""
private_pg_bin=""

_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

_as_postgres() {
  if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

_private_dir() {
  if [[ -z $private_services_dir ]]; then
    private_services_dir=$(mktemp -d /tmp/md5-test-services.XXXXXX)
    chmod 755 "$private_services_dir"
  fi
}

ensure_test_services() {
  local db=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
  local redis=${TEST_REDIS_URL:-redis://127.0.0.1:6379}
  local force=${TEST_SERVICES:-}
  if [[ -n ${TEST_DATABASE_URL:-} ]] || { [[ $force != private ]] && psql -q "$db" -c 'SELECT 1' >/dev/null 2>&1; }; then
    psql -q "$db" -c 'SELECT 1' >/dev/null 2>&1 \
      || { echo "Postgres does not answer at TEST_DATABASE_URL=$db" >&2; return 1; }
  else
    private_pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [[ -x $private_pg_bin/initdb ]] \
      || { echo "no Postgres answers at $db, and initdb is missing to start one (apt-get install postgresql)" >&2; return 1; }
    _private_dir
    local port
    port=$(_free_port)
    mkdir "$private_services_dir/pg"
    [[ $(id -u) == 0 ]] && chown postgres "$private_services_dir/pg"
    _as_postgres "$private_pg_bin/initdb" -D "$private_services_dir/pg" -U postgres -A trust >/dev/null
    _as_postgres "$private_pg_bin/pg_ctl" -D "$private_services_dir/pg" -l "$private_services_dir/pg/server.log" -w \
      -o "-p $port -k $private_services_dir/pg -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" \
      start >/dev/null
    export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
    echo "no Postgres answered at $db: started a private one at $TEST_DATABASE_URL (stopped at exit)"
  fi
  if [[ -n ${TEST_REDIS_URL:-} ]] || { [[ $force != private ]] && redis-cli -u "$redis" ping >/dev/null 2>&1; }; then
    redis-cli -u "$redis" ping >/dev/null 2>&1 \
      || { echo "Redis does not answer at TEST_REDIS_URL=$redis" >&2; return 1; }
  else
    _private_dir
    local port
    port=$(_free_port)
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$private_services_dir" \
      >"$private_services_dir/redis.log" 2>&1 &
    private_redis_pid=$!
    for _ in $(seq 100); do
      redis-cli -p "$port" ping >/dev/null 2>&1 && break
      sleep 0.05
    done
    export TEST_REDIS_URL="redis://127.0.0.1:$port"
    redis-cli -u "$TEST_REDIS_URL" ping >/dev/null 2>&1 \
      || { echo "the private Redis did not start:" >&2; cat "$private_services_dir/redis.log" >&2; return 1; }
    echo "no Redis answered at $redis: started a private one at $TEST_REDIS_URL (stopped at exit)"
  fi
}

stop_private_services() {
  [[ -n $private_services_dir ]] || return 0
  if [[ -f $private_services_dir/pg/postmaster.pid ]]; then
    _as_postgres "$private_pg_bin/pg_ctl" -D "$private_services_dir/pg" -m immediate stop >/dev/null 2>&1 || true
  fi
  if [[ -n $private_redis_pid ]]; then
    kill "$private_redis_pid" 2>/dev/null || true
    wait "$private_redis_pid" 2>/dev/null || true
  fi
  rm -rf "$private_services_dir"
  private_services_dir=""
}
