#!/usr/bin/env bash
# The test command: checks what it needs (all at once, before anything slow), installs the
# pinned tools into project-local places (reused on the next run), then runs formatting, clippy,
# one release build shared by all tests, the unit and integration tests against real Postgres
# and Redis, the schemathesis fuzz, the browser tests, the deployment checks and a benchmark
# smoke run. Ends with one summary line for everything it ran.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

echo "== prerequisites"
missing=()
for tool in cargo python3 node npm psql pg_isready redis-server redis-cli prlimit script md5sum; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=("python3-venv (the venv module)")
if [[ ! -x /usr/bin/chromium ]]; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "installing Chromium for the browser tests (apt-get install chromium)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
      || missing+=("chromium (apt-get install chromium failed)")
  else
    missing+=("chromium (as root: apt-get install chromium)")
  fi
fi
if ((${#missing[@]})); then
  echo "missing: ${missing[*]}" >&2
  echo "install them (Debian: apt-get install postgresql redis-server nodejs npm python3-venv util-linux bsdutils coreutils chromium), then run again" >&2
  exit 1
fi
logs=$(mktemp -d)
# shellcheck source=scripts/private-services.sh
source scripts/private-services.sh
trap 'stop_private_services; rm -rf "$logs"' EXIT
ensure_test_services

# Pinned Python tools in a virtual environment of the project's own, rebuilt only when the pins change.
tools=.tools/venv
if ! cmp -s scripts/test-tools.txt "$tools/installed.txt" 2>/dev/null; then
  echo "== installing the Python test tools into $tools"
  rm -rf "$tools"
  python3 -m venv "$tools"
  "$tools/bin/pip" install --quiet --disable-pip-version-check -r scripts/test-tools.txt
  cp scripts/test-tools.txt "$tools/installed.txt"
fi
export PATH="$root/$tools/bin:$PATH"
# Prometheus and promtool (Debian's package, unpacked into .tools/prometheus): the rule tests and
# the live monitoring check.
export PATH="$(scripts/install-prometheus.sh):$PATH"
# The page's npm packages, from the lockfile, reinstalled only when it changed.
# (npm's own node_modules/.package-lock.json is not a copy of the lockfile: keep one of ours.)
if ! cmp -s web/package-lock.json web/node_modules/.installed-package-lock.json 2>/dev/null; then
  echo "== npm ci (web/)"
  (cd web && npm ci --no-audit --no-fund --silent)
  cp web/package-lock.json web/node_modules/.installed-package-lock.json
fi

# shellcheck source=scripts/target-dir.sh
source scripts/target-dir.sh
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --release --all-targets --workspace -- -D warnings
cargo clippy --release --workspace --bin md5-worker-faulty --features worker/fault-injection -- -D warnings
echo "== cargo build --release --bins (what run.sh and the images build: no test hooks)"
cargo build --release --bins
echo "== the fault tests' worker with crash points (md5-worker-faulty; the shipped md5-worker is untouched)"
cargo build --release --workspace --bin md5-worker-faulty --features worker/fault-injection
if grep -qa FAULT_CRASH_AT "$cargo_bin/md5-worker"; then
    echo "error: $cargo_bin/md5-worker was built with the fault-injection hooks" >&2
    exit 1
fi
echo "== cargo test --release --workspace"
cargo test --release --workspace 2>&1 | tee "$logs/cargo"
echo "== which MD5 paths the lanes' tests ran on this CPU (AVX-512, AVX2, scalar: those it has)"
# The same selection of packages and features as above (`-p worker` alone would resolve the
# features anew and rebuild the worker's tests: a minute): only the one test is run again.
cargo test --release --workspace -q --lib lanes::tests::the_paths_this_cpu_has -- --nocapture 2>&1 \
  | grep "MD5 paths tested"
echo "== schemathesis fuzz of the API from /openapi.json"
./scripts/fuzz.sh 2>&1 | tee "$logs/fuzz"
echo "== browser tests (Chromium + playwright-core)"
./scripts/browser-test.sh 2>&1 | tee "$logs/browser"
echo "== interop with tus-js-client under Node (tus 1.0.0 and the IETF draft -05, 64 MiB in 4 MiB chunks)"
./scripts/interop-test.sh 2>&1 | tee "$logs/interop"
echo "== deployment checks (compose, hadolint, Kubernetes schemas, monitoring rules, Dockerfile builds)"
./scripts/deploy-check.sh 2>&1 | tee "$logs/deploy"
echo "== benchmark smoke run (tiny sizes; checks every task, asserts no timing)"
"$cargo_bin/bench" --smoke 2>&1 | tee "$logs/bench"
echo "== script tests of the two commands (private test services; run.sh after kill -9, SIGTERM, busy BIND_ADDR)"
./scripts/script-tests.sh 2>&1 | tee "$logs/scripts"

# One closing line for the whole run (every step above stops the run on a failure).
rust=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
            END { printf "%d %d", p, f }' "$logs/cargo")
fuzz=$(grep -oE '[0-9]+ passed' "$logs/fuzz" | tail -1 | grep -oE '[0-9]+' || echo 0)
browser_pass=$(grep -oE '^# pass [0-9]+' "$logs/browser" | grep -oE '[0-9]+' || echo 0)
browser_fail=$(grep -oE '^# fail [0-9]+' "$logs/browser" | grep -oE '[0-9]+' || echo 0)
interop_pass=$(grep -oE '^# pass [0-9]+' "$logs/interop" | grep -oE '[0-9]+' || echo 0)
interop_fail=$(grep -oE '^# fail [0-9]+' "$logs/interop" | grep -oE '[0-9]+' || echo 0)
deploy=$(grep -cE '(\.\.\. ok$|^-- )' "$logs/deploy" || true)
bench=$(grep -c '^bench smoke:' "$logs/bench" || true)
scripts=$(grep -c '^-- ok:' "$logs/scripts" || true)
read -r rust_pass rust_fail <<<"$rust"
echo "ran: Rust tests $rust_pass passed, $rust_fail failed; schemathesis $fuzz cases passed;" \
  "browser $browser_pass passed, $browser_fail failed; interop $interop_pass passed, $interop_fail failed; deployment $deploy checks; benchmark smoke $bench;" \
  "script tests $scripts"
echo "summary: $((rust_pass + fuzz + browser_pass + interop_pass + deploy + bench + scripts)) passed, $((rust_fail + browser_fail + interop_fail)) failed"
