#!/usr/bin/env bash
# Tests of the two commands themselves (called by the test command after the release build):
#   - the test command's private Postgres and Redis, used when nothing answers on the defaults;
#   - run.sh after `kill -9` of a previous run: it stops the api and workers left behind, reuses
#     the Postgres and Redis, serves again, and stops everything on SIGTERM;
#   - run.sh with a busy BIND_ADDR ends with a non-zero status;
#   - the scripts look for the binaries in cargo's target directory, CARGO_TARGET_DIR included;
#   - SIGTERM during run.sh's build stops the build and starts nothing (a cold build in a
#     throw-away target folder, interrupted after its first crate);
#   - two checkouts' run.sh at once with default settings: both serve on their own ports and
#     private services, and stopping one leaves the other serving.
# Each check prints "-- ok: <what>"; the first failure ends the script with status 1.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d /tmp/md5-script-tests.XXXXXX)
chmod 755 "$work"
run_pid=""
first=()
second=()
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "-- ok: $*"; }
wait_for() { # <seconds> <command...>: polls the command every 0.1 s
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do ((SECONDS < deadline)) || return 1; sleep 0.1; done
}
alive() { [[ -e /proc/$1 ]] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }
not_alive() { ! alive "$1"; }
port_closed() { ! python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 0.5)" 2>/dev/null; }
cleanup() {
  [[ -n $run_pid ]] && kill -TERM "$run_pid" 2>/dev/null && wait "$run_pid" 2>/dev/null
  for pid in ${other_runs[@]+"${other_runs[@]}"}; do kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
  for state in "$work"/state*; do
    if [[ -f $state/pids ]]; then xargs -r kill -KILL <"$state/pids" 2>/dev/null || true; fi
    if [[ -f $state/pg/postmaster.pid ]]; then
      pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
      if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$pg_bin/pg_ctl" -D "$state/pg" -m immediate stop; else "$pg_bin/pg_ctl" -D "$state/pg" -m immediate stop; fi >/dev/null 2>&1 || true
    fi
    [[ -f $state/redis.port ]] && redis-cli -p "$(cat "$state/redis.port")" shutdown nosave >/dev/null 2>&1 || true
  done
  for pid in "${first[@]}" "${second[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  [[ -n ${redis_port:-} ]] && redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$work"
}
other_runs=()
trap cleanup EXIT

# 1. The test command's private services.
(
  # shellcheck source=scripts/private-services.sh
  source scripts/private-services.sh
  unset TEST_DATABASE_URL TEST_REDIS_URL
  TEST_SERVICES=private ensure_test_services
  psql -q "$TEST_DATABASE_URL" -c 'SELECT 1' >/dev/null || fail "the private Postgres does not answer"
  [[ $(redis-cli -u "$TEST_REDIS_URL" ping) == PONG ]] || fail "the private Redis does not answer"
  dir=$private_services_dir
  stop_private_services
  [[ ! -e $dir ]] || fail "the private services' folder is left behind"
  psql -q "$TEST_DATABASE_URL" -c 'SELECT 1' >/dev/null 2>&1 && fail "the private Postgres still runs"
  true
) || exit 1
ok "with nothing configured, the test command starts a private Postgres and Redis and removes them"

# 1b. The scripts find the binaries where cargo puts them, also with CARGO_TARGET_DIR set.
(
  # shellcheck source=scripts/target-dir.sh
  CARGO_TARGET_DIR=$work/elsewhere source scripts/target-dir.sh
  [[ $cargo_bin == "$work/elsewhere/release" ]] || fail "with CARGO_TARGET_DIR set, the binaries are looked for in $cargo_bin"
) || exit 1
ok "run.sh, test.sh and with-service.sh look for the binaries in cargo's target directory (CARGO_TARGET_DIR too)"

# 2. run.sh after kill -9 of a previous run.
export RUN_STATE_DIR=$work/state UPLOAD_DIR=$work/uploads LOG_FILE=$work/log/md5.log WORKERS=1 RUST_LOG=warn
export PRIVATE_PG_PORT=$(free_port) PRIVATE_REDIS_PORT=$(free_port) BIND_ADDR=127.0.0.1:$(free_port)
redis_port=$PRIVATE_REDIS_PORT
unset DATABASE_URL REDIS_URL
ready() { curl -sf "http://$BIND_ADDR/readyz"; }
setsid scripts/run.sh >"$work/run1.log" 2>&1 &
run_pid=$!
wait_for 180 grep -q "^md5-api listening on" "$work/run1.log" && wait_for 60 ready || { cat "$work/run1.log"; fail "the first run did not become ready"; }
mapfile -t first < "$RUN_STATE_DIR/pids"
kill -KILL "$run_pid"; wait "$run_pid" 2>/dev/null || true
run_pid=""
for pid in "${first[@]}"; do alive "$pid" || fail "kill -9 of run.sh took its process $pid with it (the test assumes it does not)"; done

setsid scripts/run.sh >"$work/run2.log" 2>&1 &
run_pid=$!
# The old api still answers until the new run stops it: wait for the new run's own start line.
wait_for 60 grep -q "^md5-api listening on" "$work/run2.log" && wait_for 60 ready || { cat "$work/run2.log"; fail "the run after kill -9 did not become ready"; }
grep -q "previous run left ${#first[@]} service process" "$work/run2.log" || { cat "$work/run2.log"; fail "no word of the processes left behind"; }
grep -q "reusing the private Postgres" "$work/run2.log" || { cat "$work/run2.log"; fail "no word of the reused Postgres"; }
grep -q "reusing the private Redis" "$work/run2.log" || { cat "$work/run2.log"; fail "no word of the reused Redis"; }
for pid in "${first[@]}"; do not_alive "$pid" || fail "process $pid of the killed run still runs"; done
id=$(curl -sf -F "file=@$root/README.md" "http://$BIND_ADDR/api/v1/hashes" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
status() { curl -sf "http://$BIND_ADDR/api/v1/hashes/$id?wait=5" | grep -q '"status":"done"'; }
wait_for 30 status || fail "the second run does not finish an upload"
ok "after kill -9, run.sh stops what the old run left, reuses its Postgres and Redis, and serves"

mapfile -t second < "$RUN_STATE_DIR/pids"
kill -TERM "$run_pid"
wait "$run_pid" 2>/dev/null || true
run_pid=""
for pid in "${second[@]}"; do not_alive "$pid" || fail "process $pid still runs after SIGTERM"; done
wait_for 10 port_closed "$PRIVATE_REDIS_PORT" || fail "Redis still runs after SIGTERM"
wait_for 10 port_closed "$PRIVATE_PG_PORT" || fail "Postgres still runs after SIGTERM"
[[ ! -e $RUN_STATE_DIR/pids ]] || fail "the pid file is left after a clean stop"
ok "SIGTERM stops the api, the workers, Postgres and Redis"

# 3. A busy BIND_ADDR.
# The holder binds a port of its own choosing and says which: a port number picked earlier and
# bound later could be taken by anyone in between.
python3 -c "import socket,sys,time; s=socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); print(s.getsockname()[1], flush=True); time.sleep(120)" >"$work/holder.port" &
holder=$!
wait_for 10 test -s "$work/holder.port" || fail "could not hold a port for the busy-port test"
BIND_ADDR=127.0.0.1:$(cat "$work/holder.port")
set +e
timeout 120 scripts/run.sh >"$work/run3.log" 2>&1
code=$?
set -e
kill "$holder" 2>/dev/null || true
((code != 0 && code != 124)) || { cat "$work/run3.log"; fail "a busy BIND_ADDR ended with status $code"; }
ok "a busy BIND_ADDR ends run.sh with status $code"

# 4. SIGTERM during the build.
setsid env CARGO_TARGET_DIR="$work/target" scripts/run.sh >"$work/run4.log" 2>&1 &
run_pid=$!
wait_for 300 grep -q "Compiling" "$work/run4.log" || { cat "$work/run4.log"; fail "the build did not start"; }
kill -TERM "$run_pid"
set +e
wait "$run_pid"
code=$?
set -e
run_pid=""
((code == 143)) || { cat "$work/run4.log"; fail "SIGTERM during the build ended with status $code, not 143"; }
! grep -q "^md5-api listening on" "$work/run4.log" || fail "the service started after SIGTERM during the build"
build_gone() { ! grep -lsaF "CARGO_TARGET_DIR=$work/target" /proc/[0-9]*/environ >/dev/null; }
wait_for 20 build_gone || fail "cargo or rustc still runs after SIGTERM during the build"
wait_for 10 port_closed "$PRIVATE_PG_PORT" || fail "Postgres still runs after SIGTERM during the build"
wait_for 10 port_closed "$PRIVATE_REDIS_PORT" || fail "Redis still runs after SIGTERM during the build"
ok "SIGTERM during the build stops it and starts nothing (status 143)"

# 5. Two checkouts at once, default settings (each its own state folder, uploads and log, as
#    two clones have): both serve, each on its own port with its own private services, and
#    stopping either leaves the other serving.
unset PRIVATE_PG_PORT PRIVATE_REDIS_PORT BIND_ADDR DATABASE_URL REDIS_URL
redis_port=""
start_checkout() { # <name>: starts run.sh for checkout <name>, sets $run_pid
  RUN_STATE_DIR=$work/state-$1 UPLOAD_DIR=$work/$1/uploads LOG_FILE=$work/$1/log/md5.log \
    setsid scripts/run.sh >"$work/run-$1.log" 2>&1 &
  run_pid=$!
}
url_of() { sed -n 's|^md5-api listening on \(http://[^ ]*\)/ .*|\1|p' "$work/run-$1.log"; }
serves() { # <url>: an upload through it ends done
  local id
  id=$(curl -sf -F "file=@$root/README.md" "$1/api/v1/hashes" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])') || return 1
  curl -sf "$1/api/v1/hashes/$id?wait=10" | grep -q '"status":"done"'
}
start_checkout a; run_a=$run_pid; other_runs+=("$run_a")
wait_for 120 grep -q "^md5-api listening on" "$work/run-a.log" || { cat "$work/run-a.log"; fail "checkout a did not start"; }
start_checkout b; run_b=$run_pid; other_runs+=("$run_b"); run_pid=""
wait_for 120 grep -q "^md5-api listening on" "$work/run-b.log" || { cat "$work/run-b.log"; fail "checkout b did not start beside a"; }
url_a=$(url_of a); url_b=$(url_of b)
[[ -n $url_a && -n $url_b && $url_a != "$url_b" ]] || fail "the two checkouts do not listen on two addresses ($url_a, $url_b)"
pg_a=$(cat "$work/state-a/pg.port"); pg_b=$(cat "$work/state-b/pg.port")
redis_a=$(cat "$work/state-a/redis.port"); redis_b=$(cat "$work/state-b/redis.port")
[[ $pg_a != "$pg_b" && $redis_a != "$redis_b" ]] || fail "the two checkouts share a private service port"
! grep -q "reusing" "$work/run-b.log" || { cat "$work/run-b.log"; fail "checkout b adopted a service it did not start"; }
serves "$url_a" || fail "checkout a does not serve beside b"
serves "$url_b" || fail "checkout b does not serve beside a"
kill -TERM "$run_b"; wait "$run_b" 2>/dev/null || true
wait_for 10 port_closed "$redis_b" || fail "checkout b's Redis still runs after it stopped"
wait_for 10 port_closed "$pg_b" || fail "checkout b's Postgres still runs after it stopped"
redis-cli -p "$redis_a" ping >/dev/null || fail "stopping checkout b stopped checkout a's Redis"
serves "$url_a" || fail "checkout a no longer serves after b stopped"
kill -TERM "$run_a"; wait "$run_a" 2>/dev/null || true
wait_for 10 port_closed "$redis_a" || fail "checkout a's Redis still runs after it stopped"
other_runs=()
ok "two checkouts run side by side with default settings, and stopping one leaves the other serving"
