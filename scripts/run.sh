#!/usr/bin/env bash
# Runs the whole service on this machine: md5-api on BIND_ADDR (default 127.0.0.1:9000) and
# WORKERS (default 2) md5-worker processes.
#
# With DATABASE_URL and REDIS_URL set, it uses those. Without them it starts a private Postgres
# and Redis from the locally installed binaries, with their data under .run/ (ignored by git),
# on free ports (PRIVATE_PG_PORT and PRIVATE_REDIS_PORT choose them), so two checkouts run side
# by side; it never adopts or stops a service it did not start. Without BIND_ADDR the api listens
# on 127.0.0.1:9000, or on a free port when 9000 is taken (the address is printed once the api
# listens). Ctrl-C stops everything it started. A previous run that was killed outright (kill -9)
# leaves its processes running: this run stops the api and workers it left (their pids are in
# .run/pids) and reuses its Postgres and Redis, and says so. RUN_STATE_DIR moves .run/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
state=${RUN_STATE_DIR:-$root/.run}
mkdir -p "$state"
pids=()

# The api and workers of a previous run that did not get to clean up.
if [[ -f "$state/pids" ]]; then
  left=()
  while read -r pid; do
    if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qE 'md5-(api|worker)'; then
      left+=("$pid")
    fi
  done <"$state/pids"
  if ((${#left[@]})); then
    echo "a previous run left ${#left[@]} service process(es) running (pids ${left[*]}): stopping them"
    kill -TERM "${left[@]}" 2>/dev/null || true
    for _ in $(seq 100); do
      alive=0
      for pid in "${left[@]}"; do [[ -e /proc/$pid ]] && alive=1; done
      ((alive)) || break
      sleep 0.1
    done
    kill -KILL "${left[@]}" 2>/dev/null || true
  fi
  rm -f "$state/pids"
fi

cleanup() {
  trap - INT TERM EXIT
  echo "stopping..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ -n "${private_pg:-}" ]]; then as_pg "$pg_bin/pg_ctl" -D "$state/pg" -m fast stop >/dev/null || true; fi
  if [[ -n "${private_redis:-}" ]]; then redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true; fi
  rm -f "$state/pids"
}
# A signal stops everything and ends the script (also during the build, which runs in the
# background so the signal is handled at once); the exit status says how it ended.
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM
trap cleanup EXIT

# Postgres refuses to run as root: run it as the `postgres` user when we are root.
as_pg() { if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
# A port nothing listens on now, from the kernel.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# Whether something accepts connections on 127.0.0.1:$1.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [[ -z "${DATABASE_URL:-}" ]]; then
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
  [[ -x "$pg_bin/initdb" ]] || { echo "no Postgres server binaries found: apt-get install postgresql, or set DATABASE_URL" >&2; exit 1; }
  if [[ ! -f "$state/pg/PG_VERSION" ]]; then
    mkdir -p "$state/pg"; [[ $(id -u) -eq 0 ]] && chown postgres "$state" "$state/pg"
    as_pg "$pg_bin/initdb" -D "$state/pg" -U postgres --auth=trust >/dev/null
  fi
  [[ $(id -u) -eq 0 ]] && chown postgres "$state"
  if as_pg "$pg_bin/pg_ctl" -D "$state/pg" status >/dev/null 2>&1; then
    # This checkout's own Postgres (its data folder), left by a run that was killed.
    pg_port=$(cat "$state/pg.port" 2>/dev/null || echo "${PRIVATE_PG_PORT:-54329}")
    echo "reusing the private Postgres a previous run left running (port $pg_port)"
  else
    pg_port=${PRIVATE_PG_PORT:-$(free_port)}
    echo "$pg_port" >"$state/pg.port"
    as_pg "$pg_bin/pg_ctl" -D "$state/pg" -l "$state/pg.log" -w \
      -o "-p $pg_port -k $state -c listen_addresses=127.0.0.1" start >/dev/null \
      || { echo "the private Postgres did not start on port $pg_port: its log is $state/pg.log" >&2; exit 1; }
  fi
  private_pg=1
  as_pg "$pg_bin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='md5'" | grep -q 1 \
    || as_pg "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres md5
  export DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/md5"
  echo "private Postgres on port $pg_port (data in $state/pg, log $state/pg.log)"
fi

if [[ -z "${REDIS_URL:-}" ]]; then
  command -v redis-server >/dev/null || { echo "redis-server not found: apt-get install redis-server, or set REDIS_URL" >&2; exit 1; }
  # Only a Redis this checkout started (its pid file, its port) is reused, never another's.
  if [[ -f "$state/redis.pid" && -f "$state/redis.port" ]] \
    && tr '\0' ' ' 2>/dev/null <"/proc/$(cat "$state/redis.pid")/cmdline" | grep -q redis-server \
    && redis-cli -p "$(cat "$state/redis.port")" ping >/dev/null 2>&1; then
    redis_port=$(cat "$state/redis.port")
    echo "reusing the private Redis a previous run left running (port $redis_port)"
  else
    redis_port=${PRIVATE_REDIS_PORT:-$(free_port)}
    if listening "$redis_port"; then
      echo "PRIVATE_REDIS_PORT $redis_port is taken by a process this checkout did not start" >&2
      exit 1
    fi
    rm -f "$state/redis.pid"
    echo "$redis_port" >"$state/redis.port"
    redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$state" --appendonly yes --appendfsync everysec \
      --save '' --daemonize yes --pidfile "$state/redis.pid" --logfile "$state/redis.log" >/dev/null \
      || { echo "the private Redis did not start on port $redis_port: its log is $state/redis.log" >&2; exit 1; }
    for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 \
      || { echo "the private Redis did not answer on port $redis_port: its log is $state/redis.log" >&2; exit 1; }
  fi
  private_redis=1
  export REDIS_URL="redis://127.0.0.1:$redis_port"
  echo "private Redis on port $redis_port (AOF in $state, log $state/redis.log)"
fi

export UPLOAD_DIR=${UPLOAD_DIR:-$root/data/uploads}
export LOG_FILE=${LOG_FILE:-$root/data/log/md5.log}
if [[ -z "${BIND_ADDR:-}" ]]; then
  if listening 9000; then
    BIND_ADDR=127.0.0.1:$(free_port)
    echo "port 9000 is taken (another checkout's service?): this one will listen on $BIND_ADDR"
  else
    BIND_ADDR=127.0.0.1:9000
  fi
  export BIND_ADDR
fi
# shellcheck source=scripts/target-dir.sh
source "$root/scripts/target-dir.sh"
echo "building the release binaries (the first build takes several minutes)"
cargo build --release --bins & pids+=($!)
wait "${pids[0]}"
pids=()
"$cargo_bin/md5-api" & pids+=($!)
for _ in $(seq "${WORKERS:-2}"); do "$cargo_bin/md5-worker" & pids+=($!); done
printf '%s\n' "${pids[@]}" >"$state/pids"
# Announced once the api accepts connections (a wildcard address is reached on 127.0.0.1).
api_port=${BIND_ADDR##*:}
api_host=${BIND_ADDR%:*}
case "$api_host" in 0.0.0.0 | "[::]") api_host=127.0.0.1 ;; esac
for _ in $(seq 600); do
  [[ -e /proc/${pids[0]} ]] || break
  (exec 3<>"/dev/tcp/${api_host//[\[\]]/}/$api_port") 2>/dev/null && {
    echo "md5-api listening on http://$api_host:$api_port/ (the page; the API's docs at /docs) with ${WORKERS:-2} workers"
    echo "results log: $LOG_FILE; the command-line client: $cargo_bin/md5-client; Ctrl-C stops"
    break
  }
  sleep 0.1
done
# The first process to end ends the run: a busy BIND_ADDR or a bad setting exits non-zero.
status=0
wait -n "${pids[@]}" || status=$?
echo "a process of the service ended (status $status)" >&2
exit "$status"
