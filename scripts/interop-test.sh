#!/usr/bin/env bash
# Interop with third-party resumable-upload clients: tus-js-client (npm, pinned in
# web/package-lock.json) under Node, tus 1.0.0 and the IETF draft -05, against a live service
# (see with-service.sh) that takes 64 MiB uploads.
# Needs: node and npm.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -d web/node_modules/tus-js-client ]] || (cd web && npm ci --no-audit --no-fund --silent)
export MAX_UPLOAD_BYTES=$((128 * 1024 * 1024))
exec ./scripts/with-service.sh bash -c 'cd web && node --test interop/'
