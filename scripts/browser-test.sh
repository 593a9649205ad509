#!/usr/bin/env bash
# Browser tests of the page: playwright-core (npm, from web/package-lock.json) drives Debian's
# Chromium headless against a live service (see with-service.sh).
# Needs: apt-get install chromium; node and npm.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x /usr/bin/chromium ]] || { echo "Chromium is missing: apt-get install chromium" >&2; exit 1; }
[[ -d web/node_modules ]] || (cd web && npm ci --no-audit --no-fund --silent)
cmp -s web/vendor/tus.min.js web/node_modules/tus-js-client/dist/tus.min.js \
  || { echo "web/vendor/tus.min.js differs from the pinned tus-js-client (see web/vendor/README.md)" >&2; exit 1; }
# Large enough for a resumable upload of the page (files from 8 MiB on).
export MAX_UPLOAD_BYTES=$((16 * 1024 * 1024))
exec ./scripts/with-service.sh bash -c 'cd web && node --test tests/'
