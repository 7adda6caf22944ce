#!/usr/bin/env bash
# Runs every test of the workspace (unit and integration tests) against a local PostgreSQL and Redis.
#   scripts/test.sh                 # everything
#   scripts/test.sh -p postbridge-core some_test_name   # extra arguments go to `cargo test`
#                                                       # (with -p, --workspace is left out)
# Does not need a running Postbridge. The integration tests create one database per test
# (pbtest_*) through POSTBRIDGE_TEST_DATABASE_URL; they are dropped before and after the run.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=dev-env.sh
source scripts/dev-env.sh
bash scripts/ensure-services.sh

export POSTBRIDGE_TEST_DATABASE_URL="${POSTBRIDGE_TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
export POSTBRIDGE_TEST_REDIS_URL="${POSTBRIDGE_TEST_REDIS_URL:-redis://127.0.0.1:6379}"

drop_test_dbs() {
    bash scripts/drop-test-dbs.sh || echo "test.sh: warning: could not drop the pbtest_* databases" >&2
}

drop_test_dbs
on_exit() {
    local rc=$?
    trap - EXIT
    drop_test_dbs
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

flags=(--workspace)
# `cargo test --workspace -p X` would ignore -p: leave --workspace out when a package is chosen.
for arg in "$@"; do
    case "$arg" in
        --) break ;;
        -p | -p?* | --package | --package=* | --workspace | --all) flags=() ; break ;;
    esac
done
if [[ -f Cargo.lock ]]; then
    flags+=(--locked)
fi

status=0
cargo test ${flags[@]+"${flags[@]}"} "$@" || status=$?
exit "$status"
