#!/usr/bin/env bash
# Drops the per-test databases (pbtest_*) that integration-test runs create on the server behind
# POSTBRIDGE_TEST_DATABASE_URL (an admin connection, default the local postgres database).
# Used by scripts/test.sh before and after the tests; safe to run by hand at any time when no
# test run is in progress.
set -euo pipefail

url="${POSTBRIDGE_TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"

dbs="$(PGCONNECT_TIMEOUT=5 psql "$url" -XAtq -v ON_ERROR_STOP=1 \
    -c "SELECT datname FROM pg_database WHERE datname LIKE 'pbtest\_%' ORDER BY datname")"

count=0
while IFS= read -r db; do
    [[ -n "$db" ]] || continue
    quoted="\"${db//\"/\"\"}\""
    PGCONNECT_TIMEOUT=5 psql "$url" -Xq -v ON_ERROR_STOP=1 \
        -c "DROP DATABASE IF EXISTS $quoted WITH (FORCE)"
    count=$((count + 1))
done <<<"$dbs"

if [[ "$count" -gt 0 ]]; then
    echo "drop-test-dbs: dropped $count leftover test database(s)" >&2
fi
