#!/usr/bin/env bash
# Makes sure the browser tests (tests/api/consent_page.rs) can run: Debian's Chromium (package `chromium`) and the
# npm packages of tests/browser (`npm ci` from the committed package-lock.json: playwright-core only, which drives
# the installed Chromium and downloads no browser of its own). Node.js and npm come with scripts/ensure-mail-tools.sh.
# Idempotent, and silent and fast when everything is there. POSTBRIDGE_SKIP_SERVICES=1 skips it.
set -euo pipefail

if [[ "${POSTBRIDGE_SKIP_SERVICES:-}" == "1" ]]; then
    exit 0
fi
BROWSER_DIR="$(cd "$(dirname "$0")/../tests/browser" && pwd)"
readonly BROWSER_DIR

log() { echo "ensure-browser: $*" >&2; }

if [[ "$(id -u)" -eq 0 ]]; then
    as_root() { "$@"; }
else
    as_root() { sudo "$@"; }
fi

if [[ ! -x /usr/bin/chromium && -z "${CHROMIUM:-}" ]]; then
    log "installing Debian's chromium"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends chromium >&2
fi

stamp="$BROWSER_DIR/node_modules/.postbridge-package-lock.sha256"
lock_sum="$(sha256sum "$BROWSER_DIR/package-lock.json" | cut -d' ' -f1)"
if [[ ! -f "$BROWSER_DIR/node_modules/playwright-core/package.json" || "$(cat "$stamp" 2>/dev/null || true)" != "$lock_sum" ]]; then
    log "npm ci in tests/browser"
    (cd "$BROWSER_DIR" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error) >&2
    echo "$lock_sum" >"$stamp"
fi
