#!/usr/bin/env bash
# Fuzzes the whole HTTP API from its own /openapi.json with schemathesis against a live service
# (see with-service.sh). Needs schemathesis (scripts/test.sh installs it into .tools/venv).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v schemathesis >/dev/null || { echo "schemathesis is missing: run scripts/test.sh, or pip install -r scripts/test-tools.txt" >&2; exit 1; }
# The hooks serialize the resumable uploads' append bodies (application/offset+octet-stream).
export PYTHONPATH="$PWD/scripts${PYTHONPATH:+:$PYTHONPATH}" SCHEMATHESIS_HOOKS=fuzz_hooks
# A `?wait=` is held up to MAX_WAIT_SECONDS (the schema's maximum): under the request timeout.
export MAX_WAIT_SECONDS=${MAX_WAIT_SECONDS:-10}
# shellcheck disable=SC2016
exec ./scripts/with-service.sh bash -c 'schemathesis run "$MD5_BASE_URL/openapi.json" \
  --phases ${FUZZ_PHASES:-examples,coverage,fuzzing,stateful} --max-examples "${FUZZ_EXAMPLES:-100}" --seed "${FUZZ_SEED:-1}" \
  --request-timeout 30 --suppress-health-check all'
