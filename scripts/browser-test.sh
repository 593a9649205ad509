#!/usr/bin/env bash
# Browser tests of the page: playwright-core (npm, from web/package-lock.json) drives Debian's
# Chromium headless against a live service (see with-service.sh).
# Needs: apt-get install chromium; node and npm.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x /usr/bin/chromium ]] || { echo "Chromium is missing: apt-get install chromium" >&2; exit 1; }
[[ -d web/node_modules ]] || (cd web && npm ci --no-audit --no-fund --silent)
exec ./scripts/with-service.sh bash -c 'cd web && node --test tests/'
