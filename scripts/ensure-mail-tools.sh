#!/usr/bin/env bash
# Makes sure what the tests' real mail servers (tests/mail.rs, tests/mail-servers/) need is installed:
#   Dovecot with IMAP and POP3 (Debian packages dovecot-imapd, dovecot-pop3d), openssl, Node.js (>= 18.18) and npm,
#   the unprivileged system user `pbmail` that owns the test Maildirs, and the npm packages of tests/mail-servers
#   (`npm ci` from the committed package-lock.json: smtp-server and its two small dependencies); and redis-server,
#   which the operations tests start privately.
# Starts nothing: the tests start private Dovecot and SMTP instances on free loopback ports and stop them at exit.
#
# Meant for a Debian machine where we are root or have sudo. Idempotent, and silent and fast when everything is there.
# Set POSTBRIDGE_SKIP_SERVICES=1 to skip all of this (as for scripts/ensure-services.sh).
set -euo pipefail

if [[ "${POSTBRIDGE_SKIP_SERVICES:-}" == "1" ]]; then
    echo "ensure-mail-tools: POSTBRIDGE_SKIP_SERVICES=1, not checking Dovecot/Node.js" >&2
    exit 0
fi

readonly MAIL_USER=pbmail
readonly NODE_MIN_MAJOR=18
readonly NODE_MIN_MINOR=18
MAIL_SERVERS_DIR="$(cd "$(dirname "$0")/../tests/mail-servers" && pwd)"
readonly MAIL_SERVERS_DIR

log() { echo "ensure-mail-tools: $*" >&2; }
die() { echo "ensure-mail-tools: ERROR: $*" >&2; exit 1; }

if [[ "$(id -u)" -eq 0 ]]; then
    as_root() { "$@"; }
elif command -v sudo >/dev/null 2>&1; then
    as_root() { sudo "$@"; }
else
    as_root() { die "need root or sudo to run: $*"; }
fi

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; please install these packages yourself: $*"
    if [[ "$APT_UPDATED" -eq 0 ]]; then
        log "running apt-get update"
        as_root apt-get update -qq
        APT_UPDATED=1
    fi
    log "installing: $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pkg_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

# --- Debian packages -------------------------------------------------------------------------------------------------
missing=()
if command -v dpkg-query >/dev/null 2>&1; then
    for pkg in dovecot-imapd dovecot-pop3d; do
        pkg_installed "$pkg" || missing+=("$pkg")
    done
elif ! command -v dovecot >/dev/null 2>&1 && [[ ! -x /usr/sbin/dovecot ]]; then
    missing+=(dovecot-imapd dovecot-pop3d)
fi
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# The operations tests start private redis-server instances (to flush and stop them), even when the shared Redis
# runs elsewhere.
command -v redis-server >/dev/null 2>&1 || [[ -x /usr/bin/redis-server ]] || missing+=(redis-server)
if ! command -v node >/dev/null 2>&1; then
    missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
fi
if [[ ${#missing[@]} -gt 0 ]]; then
    apt_install "${missing[@]}"
fi

node_version="$(node -p 'process.versions.node' 2>/dev/null || true)"
IFS=. read -r node_major node_minor _ <<<"${node_version:-0.0.0}"
if (( node_major < NODE_MIN_MAJOR || (node_major == NODE_MIN_MAJOR && node_minor < NODE_MIN_MINOR) )); then
    die "Node.js ${node_version:-(none)} is too old; tests/mail-servers needs >= ${NODE_MIN_MAJOR}.${NODE_MIN_MINOR}"
fi

# --- the mail user ---------------------------------------------------------------------------------------------------
if ! getent passwd "$MAIL_USER" >/dev/null 2>&1; then
    log "creating the system user $MAIL_USER"
    nologin=/usr/sbin/nologin
    [[ -x "$nologin" ]] || nologin=/bin/false
    as_root useradd --system --user-group --no-create-home --home-dir /nonexistent --shell "$nologin" "$MAIL_USER"
fi

# --- npm packages ----------------------------------------------------------------------------------------------------
# node_modules is up to date when the stamp written after the last successful `npm ci` matches package-lock.json.
stamp="$MAIL_SERVERS_DIR/node_modules/.postbridge-package-lock.sha256"
lock_sum="$(sha256sum "$MAIL_SERVERS_DIR/package-lock.json" | cut -d' ' -f1)"
if [[ ! -f "$MAIL_SERVERS_DIR/node_modules/smtp-server/package.json" || "$(cat "$stamp" 2>/dev/null || true)" != "$lock_sum" ]]; then
    if ! command -v npm >/dev/null 2>&1; then
        apt_install npm
    fi
    log "npm ci in tests/mail-servers"
    (cd "$MAIL_SERVERS_DIR" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error) >&2
    echo "$lock_sum" >"$stamp"
fi
