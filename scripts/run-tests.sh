#!/usr/bin/env bash
# The suite as `make test`, `make test-stress` and `make coverage` run it:
#   1. every test not marked serial, in parallel (pytest-xdist, PYTEST_WORKERS workers);
#   2. the tests marked `@pytest.mark.serial("why")`, one at a time, alone (if any).
# Options (any order):
#   --stress    two CPU hogs (stress-ng --cpu 2, or two Python busy loops) run beside the suite
#   --coverage  line and branch coverage of every Python process (render children, CLI, serve
#               included: [tool.coverage.run] patch = subprocess), a per-package table, and the
#               check against .ci/coverage-baseline (fails on a drop of more than 1 point)
# Extra pytest arguments go in PYTEST_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
STRESS=0
COVERAGE=0
for arg in "$@"; do
    case "$arg" in
        --stress) STRESS=1 ;;
        --coverage) COVERAGE=1 ;;
        *) echo "run-tests.sh: unknown option $arg" >&2; exit 2 ;;
    esac
done
# 3 workers on 2 cores: a third of the time a worker waits on PostgreSQL, Chromium or a child
# process, so 3 keeps both cores busy; more only queue Chromiums behind each other.
WORKERS="${PYTEST_WORKERS:-3}"
read -r -a EXTRA <<< "${PYTEST_ARGS:-}"

# This run's own scratch root, not /tmp/pytest-of-$USER: every pytest session that starts on
# the machine (another suite, another engineer) resets that directory to 0700, which cuts off
# the embedded PostgreSQL's system user from the data directories of tests running meanwhile.
# Kept when the run fails, for the logs; removed when it passes.
BASETEMP=$(mktemp -d "${TMPDIR:-/tmp}/export-worker-tests.XXXXXX")
chmod 755 "$BASETEMP"

hogs=()
finish() {
    for pid in "${hogs[@]}"; do kill "$pid" 2> /dev/null || true; done
    for pid in "${hogs[@]}"; do wait "$pid" 2> /dev/null || true; done
}
trap finish EXIT
if [ "$STRESS" = 1 ]; then
    if command -v stress-ng > /dev/null; then
        stress-ng --cpu 2 --quiet --timeout 3h & hogs+=($!)
    else
        for _ in 1 2; do "$BIN/python" -c 'while True: pass' & hogs+=($!); done
    fi
    echo "run-tests.sh: two CPU hogs beside the suite (pids ${hogs[*]})"
fi

run_pytest() {
    if [ "$COVERAGE" = 1 ]; then
        "$BIN/coverage" run -m pytest "$@"
    else
        "$BIN/pytest" "$@"
    fi
}

if [ "$COVERAGE" = 1 ]; then
    "$BIN/coverage" erase
fi
started=$(date +%s)
status=0
run_pytest -n "$WORKERS" -m "not serial" --basetemp "$BASETEMP/parallel" "${EXTRA[@]}" || status=$?
if [ "$status" = 0 ] && grep -rlq --include='test_*.py' "pytest.mark.serial(" tests; then
    # The environment was checked by the first pass; 5 (nothing collected: a -k or a path
    # in PYTEST_ARGS left no serial test) is not a failure.
    TESTS_ENVIRONMENT_CHECKED=1 run_pytest -p no:xdist -m serial --basetemp "$BASETEMP/serial" "${EXTRA[@]}" \
        || status=$?
    if [ "$status" = 5 ]; then status=0; fi
fi
if [ "$status" = 0 ]; then rm -rf "$BASETEMP"; else echo "run-tests.sh: test files kept in $BASETEMP"; fi
echo "run-tests.sh: suite took $(( $(date +%s) - started )) s; load $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$COVERAGE" = 1 ]; then
    "$BIN/coverage" combine -q
    "$BIN/python" scripts/coverage_table.py --baseline .ci/coverage-baseline || status=$?
fi
exit "$status"
