#!/usr/bin/env bash
# Runs Postbridge locally: the API server and the background worker, side by side, in the foreground.
# Ctrl-C stops both; if either exits, the other is stopped and this script exits non-zero.
# Configuration comes from the environment, with development defaults from scripts/dev-env.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=dev-env.sh
source scripts/dev-env.sh
bash scripts/ensure-services.sh

log() { echo "run.sh: $*" >&2; }
die() { echo "run.sh: ERROR: $*" >&2; exit 1; }

# --- database --------------------------------------------------------------------------------------
# Split POSTBRIDGE_DATABASE_URL (postgres://user:pass@host:port/dbname?params) into the database
# name and a URL to the same server's "postgres" database.
db_url="$POSTBRIDGE_DATABASE_URL"
[[ "$db_url" == postgres://* || "$db_url" == postgresql://* ]] \
    || die "POSTBRIDGE_DATABASE_URL must be a postgres:// URL"
scheme="${db_url%%://*}"
rest="${db_url#*://}"
query=""
if [[ "$rest" == *\?* ]]; then
    query="?${rest#*\?}"
    rest="${rest%%\?*}"
fi
[[ "$rest" == */?* ]] || die "POSTBRIDGE_DATABASE_URL has no database name"
authority="${rest%%/*}"
db_name="${rest#*/}"
admin_url="${scheme}://${authority}/postgres${query}"

exists="$(PGCONNECT_TIMEOUT=5 psql "$admin_url" -XAtq -v ON_ERROR_STOP=1 -v db="$db_name" <<'SQL'
SELECT 1 FROM pg_database WHERE datname = :'db';
SQL
)"
if [[ "$exists" != "1" ]]; then
    log "creating database $db_name"
    PGCONNECT_TIMEOUT=5 psql "$admin_url" -Xq -v ON_ERROR_STOP=1 -v db="$db_name" <<'SQL'
CREATE DATABASE :"db";
SQL
fi

# --- build and migrate -----------------------------------------------------------------------------
cargo build --release -p postbridge-api -p postbridge-worker -p postbridge-migration
bin="$CARGO_TARGET_DIR/release"
"$bin/postbridge-migrate" up

# --- run -------------------------------------------------------------------------------------------
public_url="${POSTBRIDGE_PUBLIC_URL%/}"
env_file="$PWD/.postbridge-dev.env"
if [[ -f "$env_file" ]] && grep -q '^POSTBRIDGE_OPERATOR_TOKEN=' "$env_file"; then
    token_hint="POSTBRIDGE_OPERATOR_TOKEN in $env_file (unless overridden by your environment)"
else
    token_hint="POSTBRIDGE_OPERATOR_TOKEN from your environment"
fi
cat <<INFO

  Postbridge API   $public_url
  GraphiQL         $public_url/graphql
  API docs         $public_url/docs
  Worker health    http://${POSTBRIDGE_WORKER_METRICS_ADDR:-127.0.0.1:9464}/readyz
  Operator token   $token_hint

INFO

pids=()
stop_all() {
    local pid alive
    for pid in ${pids[@]+"${pids[@]}"}; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # Give them 40 s to shut down gracefully (the worker finishes jobs in flight for up to
    # POSTBRIDGE_WORKER_SHUTDOWN_GRACE, 30 s by default).
    for _ in $(seq 1 80); do
        alive=0
        for pid in ${pids[@]+"${pids[@]}"}; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [[ "$alive" -eq 1 ]] || break
        sleep 0.5
    done
    for pid in ${pids[@]+"${pids[@]}"}; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    stop_all
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$bin/postbridge-api" serve &
api_pid=$!
pids+=("$api_pid")
# The worker serves /metrics, /healthz and /readyz here unless you chose another address (or "none").
POSTBRIDGE_WORKER_METRICS_ADDR="${POSTBRIDGE_WORKER_METRICS_ADDR:-127.0.0.1:9464}" "$bin/postbridge-worker" &
worker_pid=$!
pids+=("$worker_pid")

status=0
wait -n || status=$?
if ! kill -0 "$api_pid" 2>/dev/null; then
    log "postbridge-api exited (status $status); stopping the worker"
else
    log "postbridge-worker exited (status $status); stopping the API"
fi
[[ "$status" -ne 0 ]] || status=1
exit "$status"
