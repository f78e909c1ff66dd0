#!/usr/bin/env bash
# Runs libFuzzer targets (build/fuzz/fuzz_NAME) for SECONDS each on their seeds,
# tests/fuzz/corpus/NAME/ (read only: inputs the fuzzer finds go to a scratch directory that is
# removed afterwards), with tests/fuzz/NAME.dict when there is one. A crash, a sanitizer
# report, a leak, an input running past 10 s or memory past 2 GiB fails the target; its
# reproducer is kept in build/fuzz/crashes/NAME/ (replay: build/fuzz/fuzz_NAME FILE).
# Usage: tools/run_fuzz.sh SECONDS TARGET...; exits non-zero when any target failed.
set -u
seconds=$1
shift
root=$(cd "$(dirname "$0")/.." && pwd)
failed=0
for bin in "$@"; do
    bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
    name=$(basename "$bin")
    name=${name#fuzz_}
    crashes="$(dirname "$bin")/crashes/$name"
    mkdir -p "$crashes"
    scratch=$(mktemp -d "${TMPDIR:-/tmp}/mobagen-fuzz-$name.XXXXXX")
    mkdir "$scratch/corpus"
    dict=()
    [ -f "$root/tests/fuzz/$name.dict" ] && dict=("-dict=$root/tests/fuzz/$name.dict")
    # From the scratch directory, with TMPDIR there too: whatever a target might write stays in it.
    (cd "$scratch" && TMPDIR="$scratch" ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}" \
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
        "$bin" "${dict[@]}" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$crashes/" -print_final_stats=1 \
        "$scratch/corpus" "$root/tests/fuzz/corpus/$name") >"$scratch/log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/log")
    if [ $rc -eq 0 ]; then
        echo "fuzz_$name: passed, ${runs:-?} inputs in ${seconds} s"
    else
        tail -n 60 "$scratch/log"
        echo "fuzz_$name: FAILED (exit $rc); reproducer in $crashes/:" $(ls "$crashes")
        failed=1
    fi
    rm -rf "$scratch"
done
exit $failed
