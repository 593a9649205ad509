#!/usr/bin/env bash
# Runs a command against a live service: md5-api and one md5-worker (the release binaries) on a
# fresh database of the local Postgres and a private stream of the local Redis. The command sees
# MD5_BASE_URL and MD5_MAX_UPLOAD_BYTES. Everything is removed afterwards.
#   scripts/with-service.sh <command> [args...]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/target-dir.sh
source scripts/target-dir.sh
[[ -x $cargo_bin/md5-api && -x $cargo_bin/md5-worker ]] \
  || { echo "build the binaries first: cargo build --release --bins (looked in $cargo_bin)" >&2; exit 1; }

admin=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
db="md5_live_$$"
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
psql -q "$admin" -c "CREATE DATABASE $db"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  psql -q "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  rm -rf "$work"
}
trap cleanup EXIT

export DATABASE_URL="${admin%/*}/$db" REDIS_URL=${TEST_REDIS_URL:-redis://127.0.0.1:6379}
export JOBS_STREAM="live:$$:jobs" JOBS_GROUP="live-$$" UPLOAD_DIR="$work/uploads" LOG_FILE="$work/log/md5.log"
export BIND_ADDR="127.0.0.1:$port" MAX_UPLOAD_BYTES=${MAX_UPLOAD_BYTES:-1048576} MIN_FREE_BYTES=0 RUST_LOG=warn
"$cargo_bin/md5-api" 2>"$work/api.log" & pids+=($!)
"$cargo_bin/md5-worker" 2>"$work/worker.log" & pids+=($!)
for _ in $(seq 300); do
  curl -sf "http://$BIND_ADDR/readyz" >/dev/null && break
  sleep 0.1
done
curl -sf "http://$BIND_ADDR/readyz" >/dev/null || { echo "md5-api did not become ready:" >&2; cat "$work/api.log" >&2; exit 1; }

export MD5_BASE_URL="http://$BIND_ADDR" MD5_MAX_UPLOAD_BYTES=$MAX_UPLOAD_BYTES MD5_API_BIN="$cargo_bin/md5-api"
"$@"
