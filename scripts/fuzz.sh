#!/usr/bin/env bash
# Fuzzes the whole HTTP API from its own /openapi.json with schemathesis: a real md5-api and
# md5-worker on a fresh database of the local Postgres and a private stream of the local Redis.
# Needs the release binaries (cargo build --release --bins) and schemathesis (pip install schemathesis).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v schemathesis >/dev/null || { echo "schemathesis is missing: pip install schemathesis" >&2; exit 1; }

admin=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
db="md5_fuzz_$$"
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
export JOBS_STREAM="fuzz:$$:jobs" JOBS_GROUP="fuzz-$$" UPLOAD_DIR="$work/uploads" LOG_FILE="$work/log/md5.log"
export BIND_ADDR="127.0.0.1:$port" MAX_UPLOAD_BYTES=1048576 MIN_FREE_BYTES=0 RUST_LOG=warn
target/release/md5-api 2>"$work/api.log" & pids+=($!)
target/release/md5-worker 2>"$work/worker.log" & pids+=($!)

schemathesis run "http://127.0.0.1:$port/openapi.json" \
  --phases examples,coverage,fuzzing --checks all --max-examples "${FUZZ_EXAMPLES:-100}" --seed 1 --wait-for-schema 30 \
  --request-timeout 30 --suppress-health-check all
