#!/usr/bin/env bash
# Runs on the GPU machine, over a tree that carries build/mobagen and build/gpu (make gpu-kit
# here: the GPU machine has no Lua, libyaml or cmocka). Builds every shipped spec for the
# device, runs the GPU tests and the benchmarks, writes logs under $OUT, prints a table last.
#   tools/device.sh [tests|bench|all]   (default all)
set -u
what=${1:-all}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
OUT=${OUT:-/tmp/mobagen-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$root/build/gpu/lib:${LD_LIBRARY_PATH:-}"
export MOBAGEN_CACHE_DIR=${MOBAGEN_CACHE_DIR:-/tmp/mobagen-cache}
export MOBAGEN_TEST_ROOT="$root"
export PYTHONUNBUFFERED=1
summary="$OUT/summary.txt"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader \
    > "$OUT/gpu.txt" 2>&1
note "gpu: $(head -1 "$OUT/gpu.txt")"
build/mobagen doctor > "$OUT/doctor.txt" 2>&1
arch=$(sed -n 's/.*\(sm_[0-9]*a\?\), .*/\1/p' "$OUT/doctor.txt" | head -1)
case "$arch" in sm_90 | sm_100) arch="${arch}a" ;; esac   # the device's own 'a' target
note "arch: ${arch:-unknown}"

if [ "$what" = all ] || [ "$what" = tests ]; then
    for s in specs/*.yaml; do
        build/mobagen build "$s" --arch "${arch:-sm_90a}" >> "$OUT/build.log" 2>&1 \
            || note "build FAILED: $s"
    done
    note "spec builds: $(grep -c 'variants' "$OUT/build.log") specs, $(grep -c FAILED "$OUT/build.log") failures"
    for t in build/gpu/tests/test_gpu_*; do
        [ -x "$t" ] || continue
        name=$(basename "$t")
        start=$(date +%s)
        "$t" > "$OUT/$name.log" 2>&1
        rc=$?
        grep -E '^  [a-z0-9_]+ +runs|seed|device' "$OUT/$name.log" | tee -a "$summary"
        note "$name: exit $rc, $(grep -o 'PASSED  \] [0-9]*' "$OUT/$name.log" | grep -o '[0-9]*$') passed, $(grep -o 'FAILED  \] [0-9]*' "$OUT/$name.log" | grep -o '[0-9]*$' || echo 0) failed, $(( $(date +%s) - start )) s"
        grep -E 'error|Error|FAIL' "$OUT/$name.log" | head -20 | tee -a "$summary"
    done
    # Out-of-bounds or misaligned accesses and uninitialised reads, on the grid of small cases.
    if command -v compute-sanitizer >/dev/null; then
        start=$(date +%s)
        MOBAGEN_TEST_QUICK=1 compute-sanitizer --tool memcheck --error-exitcode 9 \
            build/gpu/tests/test_gpu_fwd > "$OUT/memcheck.log" 2>&1
        note "memcheck: exit $?, $(grep -c 'Invalid\|Uninitialized\|misaligned' "$OUT/memcheck.log") reports, $(grep 'ERROR SUMMARY' "$OUT/memcheck.log" | tail -1), $(( $(date +%s) - start )) s"
    fi
    # Shared-memory races of the routing kernels (heaps, staged tiles), on two small cases.
    if command -v compute-sanitizer >/dev/null; then
        start=$(date +%s)
        for c in ties_d64 d128_b16_k64; do
            MOBAGEN_TEST_QUICK=1 MOBAGEN_TEST_CASE=$c compute-sanitizer --tool racecheck \
                --kernel-name kns=moba_route --error-exitcode 9 build/gpu/tests/test_gpu_fwd \
                >> "$OUT/racecheck.log" 2>&1
            note "racecheck ($c, routing kernels): exit $?, $(grep 'RACECHECK SUMMARY\|ERROR SUMMARY' "$OUT/racecheck.log" | tail -1)"
        done
        note "racecheck: $(( $(date +%s) - start )) s"
    fi
    build/gpu/example_fwd specs/default.yaml > "$OUT/example.log" 2>&1
    note "example_fwd: exit $?: $(tail -1 "$OUT/example.log")"
fi

if [ "$what" = all ] || [ "$what" = bench ]; then
    for b in build/gpu/bench/*; do
        [ -x "$b" ] || continue
        "$b" > "$OUT/$(basename "$b").log" 2>&1 || note "$(basename "$b") FAILED"
        tail -n 30 "$OUT/$(basename "$b").log" >> "$summary"
    done
    if [ -f bench/peers.py ]; then
        python3 bench/peers.py > "$OUT/peers.log" 2>&1 || note "peers.py FAILED"
        tail -n 30 "$OUT/peers.log" >> "$summary"
    fi
fi
echo "================ summary ================"
cat "$summary"
