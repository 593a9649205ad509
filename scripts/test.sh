#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, one release build shared by all tests, then
# unit and integration tests against the real Postgres and Redis (see README "Testing").
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --release --all-targets --workspace -- -D warnings
echo "== cargo build --release --bins"
cargo build --release --bins
echo "== cargo test --release --workspace"
cargo_log=$(mktemp)
trap 'rm -f "$cargo_log"' EXIT
cargo test --release --workspace 2>&1 | tee "$cargo_log"
echo "== schemathesis fuzz of the API from /openapi.json"
./scripts/fuzz.sh
echo "== browser tests (Chromium + playwright-core)"
./scripts/browser-test.sh
echo "== deployment checks (compose, hadolint, Kubernetes schemas, Dockerfile builds)"
./scripts/deploy-check.sh
echo "== benchmark smoke run (tiny sizes; checks every task, asserts no timing)"
target/release/bench --smoke

# One closing line for the whole run: the Rust tests' totals (every step above exits non-zero on failure).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$cargo_log"
