#!/usr/bin/env bash
# Schema-based fuzzing of the REST API: schemathesis generates requests from /openapi.json (valid and invalid ones)
# against a freshly started API and fails on any 5xx answer or any status the document does not list.
#   scripts/fuzz-api.sh
#   POSTBRIDGE_FUZZ_EXAMPLES=50 POSTBRIDGE_FUZZ_SECONDS=600 scripts/fuzz-api.sh   # deeper
# scripts/test.sh runs it after the tests when POSTBRIDGE_FUZZ=1.
#
# Starts what it needs: Postgres and Redis (scripts/ensure-services.sh), a throwaway database (dropped at exit), the
# API (debug build) on a free loopback port with throwaway keys, a tenant and an admin key; installs schemathesis
# into a virtualenv under ~/.cache on first use (PyPI). Rate limits are off, so the run explores rather than waits.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=dev-env.sh
source scripts/dev-env.sh
bash scripts/ensure-services.sh

log() { echo "fuzz-api: $*" >&2; }
die() { echo "fuzz-api: ERROR: $*" >&2; exit 1; }

examples="${POSTBRIDGE_FUZZ_EXAMPLES:-10}"
seconds="${POSTBRIDGE_FUZZ_SECONDS:-240}"
schemathesis_version="4.32.5"

# --- schemathesis ----------------------------------------------------------------------------------------------
venv="${POSTBRIDGE_FUZZ_VENV:-$HOME/.cache/postbridge-fuzz-venv}"
if [[ ! -x "$venv/bin/schemathesis" ]] || [[ "$("$venv/bin/schemathesis" --version 2>/dev/null)" != *"$schemathesis_version"* ]]; then
    log "installing schemathesis $schemathesis_version into $venv"
    python3 -m venv "$venv"
    if [[ -x "$venv/bin/pip" ]]; then
        "$venv/bin/pip" install -q "schemathesis==$schemathesis_version"
    else
        python3 -m pip --python "$venv/bin/python" install -q "schemathesis==$schemathesis_version"
    fi
fi

# --- a throwaway database and the API --------------------------------------------------------------------------
admin_url="${POSTBRIDGE_TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
suffix="$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
db="pbfuzz_${suffix}"
random_b64() { head -c32 /dev/urandom | base64; }

api_pid=""
on_exit() {
    local rc=$?
    trap - EXIT
    if [[ -n "$api_pid" ]]; then
        kill -TERM "$api_pid" 2>/dev/null || true
        wait "$api_pid" 2>/dev/null || true
    fi
    psql "$admin_url" -Xq -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || log "warning: could not drop $db"
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

psql "$admin_url" -Xq -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$db\"" >/dev/null
cargo build -q -p postbridge-api
bin="$CARGO_TARGET_DIR/debug/postbridge-api"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
operator="pbo_$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"

export POSTBRIDGE_DATABASE_URL="${admin_url%/*}/$db"
export POSTBRIDGE_LISTEN_ADDR="127.0.0.1:$port"
export POSTBRIDGE_PUBLIC_URL="http://127.0.0.1:$port"
export POSTBRIDGE_REDIS_PREFIX="pbfuzz:$suffix"
export POSTBRIDGE_MASTER_KEYS="k1:$(random_b64)"
export POSTBRIDGE_JWT_KEYS="j1:HS256:$(random_b64)"
unset POSTBRIDGE_JWT_SIGNING_KEY_ID POSTBRIDGE_ACTIVE_KEY_ID
export POSTBRIDGE_OPERATOR_TOKEN="$operator"
export POSTBRIDGE_ALLOW_PRIVATE_HOSTS=true
export POSTBRIDGE_API_RATE_LIMIT_PER_MINUTE=0
export POSTBRIDGE_ANON_RATE_LIMIT_PER_MINUTE=0
export RUST_LOG="${RUST_LOG_FUZZ:-warn}"

"$bin" migrate >/dev/null
"$bin" serve &
api_pid=$!
api="http://127.0.0.1:$port"
for _ in $(seq 1 100); do
    curl -fsS "$api/healthz" >/dev/null 2>&1 && break
    kill -0 "$api_pid" 2>/dev/null || die "the API exited at start-up"
    sleep 0.2
done
curl -fsS "$api/healthz" >/dev/null || die "the API did not come up on $api"

json_field() { python3 -c "import sys, json; print(json.load(sys.stdin)$1)"; }
tenant="$(curl -fsS -H "Authorization: Bearer $operator" -H 'content-type: application/json' \
    -d "{\"slug\":\"fuzz-$suffix\",\"name\":\"Fuzz\"}" "$api/v1/tenants" | json_field '["id"]')"
key="$(curl -fsS -H "Authorization: Bearer $operator" -H "X-Postbridge-Tenant: $tenant" -H 'content-type: application/json' \
    -d '{"name":"fuzz","role":"admin"}' "$api/v1/api-keys" | json_field '["secret"]')"

# --- the run ---------------------------------------------------------------------------------------------------
log "fuzzing $api/openapi.json as a tenant admin ($examples examples per operation, at most ${seconds}s)"
started=$SECONDS
status=0
timeout --kill-after=10 "$seconds" "$venv/bin/schemathesis" run "$api/openapi.json" \
    --header "Authorization: Bearer $key" \
    --checks not_a_server_error,status_code_conformance \
    --max-examples "$examples" \
    --request-timeout 20 \
    --generation-deterministic \
    --suppress-health-check all \
    --no-color || status=$?
log "finished in $((SECONDS - started))s (status $status)"
if [[ "$status" -eq 124 || "$status" -eq 137 ]]; then
    die "the run did not finish within ${seconds}s (POSTBRIDGE_FUZZ_SECONDS)"
fi
exit "$status"
