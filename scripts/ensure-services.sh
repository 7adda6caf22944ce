#!/usr/bin/env bash
# Makes sure the local services Postbridge needs for development and tests are up:
#   PostgreSQL (>= 13) on 127.0.0.1:5432, reachable as postgres://postgres:postgres@127.0.0.1:5432/postgres
#   Redis on 127.0.0.1:6379
# and that the psql / redis-cli clients and cargo exist.
#
# Meant for a Debian machine where we are root or have sudo; installs missing packages with apt-get
# and starts the servers without systemd. Idempotent: when everything is already up it prints a
# single line ("postgres: ok, redis: ok").
#
# Set POSTBRIDGE_SKIP_SERVICES=1 to skip all of this (e.g. when using your own servers).
set -euo pipefail

if [[ "${POSTBRIDGE_SKIP_SERVICES:-}" == "1" ]]; then
    echo "ensure-services: POSTBRIDGE_SKIP_SERVICES=1, not checking PostgreSQL/Redis" >&2
    exit 0
fi

readonly PG_HOST=127.0.0.1
readonly PG_PORT=5432
readonly PG_URL="postgres://postgres:postgres@${PG_HOST}:${PG_PORT}/postgres"
readonly PG_MIN_VERSION_NUM=130000
readonly REDIS_HOST=127.0.0.1
readonly REDIS_PORT=6379

log() { echo "ensure-services: $*" >&2; }
die() { echo "ensure-services: ERROR: $*" >&2; exit 1; }

# Privilege helpers: run as root / as the postgres OS user.
if [[ "$(id -u)" -eq 0 ]]; then
    as_root() { "$@"; }
    as_postgres() { (cd / && runuser -u postgres -- "$@"); }
elif command -v sudo >/dev/null 2>&1; then
    as_root() { sudo "$@"; }
    as_postgres() { (cd / && sudo -u postgres "$@"); }
else
    as_root() { die "need root or sudo to run: $*"; }
    as_postgres() { die "need root or sudo to run as postgres: $*"; }
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

# --- toolchain -------------------------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1 && [[ ! -x "${HOME:-}/.cargo/bin/cargo" ]]; then
    die "cargo not found. Install Rust with rustup (https://rustup.rs): curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh"
fi

# --- clients ---------------------------------------------------------------------------------------
if ! command -v psql >/dev/null 2>&1 || ! command -v pg_isready >/dev/null 2>&1; then
    apt_install postgresql-client
fi
if ! command -v redis-cli >/dev/null 2>&1; then
    apt_install redis-tools
fi

# --- PostgreSQL ------------------------------------------------------------------------------------
pg_ready() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" >/dev/null 2>&1; }

# Highest installed PostgreSQL major version that has a "main" cluster (empty if none).
pg_main_version() {
    local d best=""
    for d in /etc/postgresql/*/main; do
        [[ -d "$d" ]] || continue
        d="${d%/main}"; d="${d##*/}"
        if [[ -z "$best" ]] || (( ${d%%.*} > ${best%%.*} )); then best="$d"; fi
    done
    echo "$best"
}

# Highest installed PostgreSQL server version (binaries present), empty if none.
pg_server_version() {
    local d best=""
    for d in /usr/lib/postgresql/*/bin/postgres; do
        [[ -x "$d" ]] || continue
        d="${d%/bin/postgres}"; d="${d##*/}"
        if [[ -z "$best" ]] || (( ${d%%.*} > ${best%%.*} )); then best="$d"; fi
    done
    echo "$best"
}

pg_start() {
    local version
    version="$(pg_main_version)"
    if [[ -z "$version" ]]; then
        version="$(pg_server_version)"
        [[ -n "$version" ]] || die "PostgreSQL server binaries not found after installation"
        log "creating PostgreSQL $version cluster 'main' on port $PG_PORT"
        as_root pg_createcluster --port "$PG_PORT" "$version" main >/dev/null
    fi
    if (( ${version%%.*} < 13 )); then
        die "PostgreSQL $version is installed but Postbridge needs >= 13"
    fi
    local port
    port="$(sed -n 's/^[[:space:]]*port[[:space:]]*=[[:space:]]*\([0-9]*\).*/\1/p' "/etc/postgresql/$version/main/postgresql.conf" 2>/dev/null | head -n1 || true)"
    if [[ -n "$port" && "$port" != "$PG_PORT" ]]; then
        log "warning: PostgreSQL $version/main is configured for port $port, not $PG_PORT"
    fi
    # The socket directory lives on tmpfs in many containers; recreate it if needed.
    as_root install -d -o postgres -g postgres -m 2775 /var/run/postgresql
    log "starting PostgreSQL $version/main"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start \
        || log "pg_ctlcluster returned an error (see /var/log/postgresql/postgresql-$version-main.log)"
}

pg_actions=()
if ! pg_ready; then
    if [[ -z "$(pg_main_version)" && -z "$(pg_server_version)" ]]; then
        apt_install postgresql
        pg_actions+=("installed")
    fi
    # The package install may already have started it.
    if ! pg_ready; then
        pg_start
        pg_actions+=("started")
    fi
    for _ in $(seq 1 30); do
        pg_ready && break
        sleep 1
    done
    pg_ready || die "PostgreSQL is still not accepting connections on $PG_HOST:$PG_PORT after 30 s"
fi

pg_query() { PGCONNECT_TIMEOUT=3 psql "$PG_URL" -XAtq -v ON_ERROR_STOP=1 -c "$1" 2>/dev/null; }

if ! pg_query 'select 1' >/dev/null; then
    log "cannot connect as $PG_URL; setting the postgres user's password to 'postgres'"
    as_postgres psql -Xq -v ON_ERROR_STOP=1 -c "ALTER USER postgres PASSWORD 'postgres'" >/dev/null
    pg_actions+=("password set")
    if ! pg_query 'select 1' >/dev/null; then
        PGCONNECT_TIMEOUT=3 psql "$PG_URL" -Xq -c 'select 1' >&2 || true
        die "still cannot connect to $PG_URL; check pg_hba.conf allows password (scram-sha-256/md5) or trust auth for host connections from $PG_HOST"
    fi
fi

pg_version_num="$(pg_query 'show server_version_num' || true)"
if [[ -n "$pg_version_num" ]] && (( pg_version_num < PG_MIN_VERSION_NUM )); then
    die "the PostgreSQL server on $PG_HOST:$PG_PORT is version $(pg_query 'show server_version'); Postbridge needs >= 13"
fi

# --- Redis -----------------------------------------------------------------------------------------
redis_ready() { [[ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null || true)" == "PONG" ]]; }

redis_start() {
    local dir major bind=("$REDIS_HOST")
    dir="$(mktemp -d "${TMPDIR:-/tmp}/postbridge-redis.XXXXXX")"
    # "-::1" (bind IPv6 loopback if available) needs Redis >= 7.
    major="$(redis-server --version | sed -n 's/.* v=\([0-9]*\)\..*/\1/p')"
    if [[ -n "$major" ]] && (( major >= 7 )); then bind+=("-::1"); fi
    log "starting redis-server on $REDIS_HOST:$REDIS_PORT (dir $dir, log $dir/redis.log)"
    redis-server --daemonize yes --bind "${bind[@]}" --port "$REDIS_PORT" \
        --save "" --appendonly no --dir "$dir" --logfile "$dir/redis.log"
}

redis_actions=()
if ! redis_ready; then
    if ! command -v redis-server >/dev/null 2>&1; then
        apt_install redis-server redis-tools
        redis_actions+=("installed")
    fi
    if ! redis_ready; then
        redis_start
        redis_actions+=("started")
    fi
    for _ in $(seq 1 15); do
        redis_ready && break
        sleep 1
    done
    redis_ready || die "Redis is still not answering PING on $REDIS_HOST:$REDIS_PORT after 15 s"
fi

describe() {
    local name="$1" out="" a; shift
    if [[ $# -eq 0 ]]; then
        echo "$name: ok"
        return
    fi
    for a in "$@"; do out+="${out:+, }$a"; done
    echo "$name: ok ($out)"
}
summary_pg="$(describe postgres ${pg_actions[@]+"${pg_actions[@]}"})"
summary_redis="$(describe redis ${redis_actions[@]+"${redis_actions[@]}"})"
echo "$summary_pg, $summary_redis"
