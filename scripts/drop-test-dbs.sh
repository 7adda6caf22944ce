#!/usr/bin/env bash
# Drops per-test databases on the server behind POSTBRIDGE_TEST_DATABASE_URL (an admin connection).
#   drop-test-dbs.sh PREFIX   drop every database named PREFIX* (this run's own, even if still connected)
#   drop-test-dbs.sh --idle   drop leftover pbtest_* databases nobody is connected to (earlier, finished runs);
#                             a concurrent run's databases are in use and are left alone
set -euo pipefail

url="${POSTBRIDGE_TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
mode="${1:?usage: drop-test-dbs.sh PREFIX | --idle}"

if [[ "$mode" == "--idle" ]]; then
    query="SELECT d.datname FROM pg_database d WHERE d.datname LIKE 'pbtest\_%'
           AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datid = d.oid) ORDER BY 1"
    force=""
else
    [[ "$mode" =~ ^pbtest_[a-z0-9_]*$ ]] || { echo "drop-test-dbs: refusing prefix '$mode'" >&2; exit 2; }
    query="SELECT datname FROM pg_database WHERE starts_with(datname, '$mode') ORDER BY 1"
    force=" WITH (FORCE)"
fi

dbs="$(PGCONNECT_TIMEOUT=5 psql "$url" -XAtq -v ON_ERROR_STOP=1 -c "$query")"
count=0
while IFS= read -r db; do
    [[ -n "$db" ]] || continue
    quoted="\"${db//\"/\"\"}\""
    # An idle database a new test is just connecting to makes DROP fail; skip it, it is not leftover.
    if PGCONNECT_TIMEOUT=5 psql "$url" -Xq -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS $quoted$force" 2>/dev/null; then
        count=$((count + 1))
    fi
done <<<"$dbs"

if [[ "$count" -gt 0 ]]; then
    echo "drop-test-dbs: dropped $count test database(s)" >&2
fi
