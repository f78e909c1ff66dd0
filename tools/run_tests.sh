#!/usr/bin/env bash
# Runs every test binary under BUILD/tests (cmocka), then prints one closing line that CI reads:
# "N passed, N failed, N skipped". A binary that crashes or prints no cmocka summary counts as
# one failure. Tests find the CLI and the source tree through MOBAGEN_TEST_* variables.
set -u
build=${1:-build/san}
root=$(cd "$(dirname "$0")/.." && pwd)
export MOBAGEN_TEST_CLI="$root/$build/mobagen"
export MOBAGEN_TEST_ROOT="$root"
export MOBAGEN_CACHE_DIR="${MOBAGEN_TEST_CACHE:-$root/$build/test-cache}"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}"
export LSAN_OPTIONS="suppressions=$root/tools/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
passed=0 failed=0 skipped=0
log=$(mktemp)
for t in "$root/$build"/tests/test_*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    echo "== $name"
    "$t" >"$log" 2>&1
    rc=$?
    cat "$log"
    p=$(sed -n 's/.*\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
    f=$(sed -n 's/.*\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
    s=$(sed -n 's/.*\[  SKIPPED \] \([0-9]*\) test.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
    if ! grep -q '\[  PASSED  \]' "$log" && [ "$f" -eq 0 ]; then
        echo "$name: exited $rc without a test summary"; f=1
    elif [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "$name: exited $rc"; f=1
    fi
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
done
# The Python package (python/tests/run.py, unittest): tests that need torch, a GPU or a built
# libmobagen.so skip with the reason where those are missing.
echo "== python"
if command -v python3 >/dev/null; then
    python3 "$root/python/tests/run.py" >"$log" 2>&1
    rc=$?
    cat "$log"
    counts=$(sed -n 's/^python tests: \([0-9]*\) passed, \([0-9]*\) failed, \([0-9]*\) skipped$/\1 \2 \3/p' "$log" | tail -1)
    if [ -z "$counts" ]; then
        echo "python tests: exited $rc without a summary"; counts="0 1 0"
    elif [ $rc -ne 0 ] && [ "$(echo "$counts" | cut -d' ' -f2)" -eq 0 ]; then
        echo "python tests: exited $rc"; counts="${counts% * *} 1 ${counts##* }"
    fi
    read -r p f s <<<"$counts"
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
else
    echo "python tests: skipped: python3 not installed"; skipped=$((skipped + 1))
fi
rm -f "$log"
# libFuzzer targets (FUZZ_BUILD, built by `make test`), FUZZ_SECONDS each: one test apiece.
for t in "$root/${FUZZ_BUILD:-build/fuzz}"/fuzz_*; do
    [ -n "${FUZZ_BUILD:-}" ] && [ -x "$t" ] || continue
    echo "== $(basename "$t") (${FUZZ_SECONDS:-45} s)"
    if "$root/tools/run_fuzz.sh" "${FUZZ_SECONDS:-45}" "$t"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
    fi
done
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
