#!/usr/bin/env bash
# Runs every test of the workspace (unit and integration tests) against a local PostgreSQL and Redis.
#   scripts/test.sh                 # everything, then the schema-based API fuzz run (scripts/fuzz-api.sh)
#   scripts/test.sh -p postbridge-core some_test_name   # extra arguments go to `cargo test`, and no fuzz run
#                                                       # (with -p, --workspace is left out)
#   POSTBRIDGE_FUZZ=0 scripts/test.sh                   # the tests without the fuzz run
#   POSTBRIDGE_CLIPPY=0 scripts/test.sh                 # without the lint pass (clippy, warnings are errors)
# Does not need a running Postbridge. The integration tests create one database per test
# (named POSTBRIDGE_TEST_DB_PREFIX*) through POSTBRIDGE_TEST_DATABASE_URL; this run's are dropped after it,
# idle leftovers of earlier runs before it.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=dev-env.sh
source scripts/dev-env.sh
bash scripts/ensure-services.sh
bash scripts/ensure-mail-tools.sh
bash scripts/ensure-browser.sh

export POSTBRIDGE_TEST_DATABASE_URL="${POSTBRIDGE_TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
export POSTBRIDGE_TEST_REDIS_URL="${POSTBRIDGE_TEST_REDIS_URL:-redis://127.0.0.1:6379}"

# This run's databases carry their own prefix, so cleaning up never touches a concurrent run's.
export POSTBRIDGE_TEST_DB_PREFIX="pbtest_r$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')_"

bash scripts/drop-test-dbs.sh --idle || echo "test.sh: warning: could not drop leftover test databases" >&2
on_exit() {
    local rc=$?
    trap - EXIT
    bash scripts/drop-test-dbs.sh "$POSTBRIDGE_TEST_DB_PREFIX" || echo "test.sh: warning: could not drop this run's test databases" >&2
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
# The lint pass and the fuzz run belong to the whole suite; a run narrowed by arguments skips them unless asked for.
whole_suite=1
if [[ $# -gt 0 ]]; then
    whole_suite=0
fi
run_clippy="${POSTBRIDGE_CLIPPY:-$whole_suite}"
if [[ "$run_clippy" == "1" ]] && ! cargo clippy --version >/dev/null 2>&1; then
    # rustup's minimal profile leaves clippy out; add it rather than skip the lint pass.
    rustup component add clippy >&2 || { echo "test.sh: warning: clippy unavailable, lint pass skipped" >&2; run_clippy=0; }
fi
if [[ "$run_clippy" == "1" ]]; then
    # Shipped crates deny unwrap/expect/panic outside tests (Cargo.toml's [workspace.lints]); every warning fails.
    cargo clippy --locked -p postbridge-core -p postbridge-api -p postbridge-worker -p postbridge-migration --all-targets \
        -- -D warnings || status=$?
fi
if [[ "$status" -eq 0 ]]; then
    cargo test ${flags[@]+"${flags[@]}"} "$@" || status=$?
else
    echo "test.sh: clippy found problems; fix them (or POSTBRIDGE_CLIPPY=0) to run the tests" >&2
fi
fuzz_default=$whole_suite
if [[ "${POSTBRIDGE_FUZZ:-$fuzz_default}" == "1" && "$status" -eq 0 ]]; then
    bash scripts/fuzz-api.sh || status=$?
fi
exit "$status"
