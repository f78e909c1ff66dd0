#!/usr/bin/env bash
# Attention work on the GPU machine, in one call: GPU tests (grid, 48-row chunks, long cases),
# racecheck and memcheck of the attention kernels on small cases, stage timings of the paper
# specs, and one Nsight Compute profile of the tile kernel at 64K (B128 k8). Logs under $OUT,
# a short table last. Needs `make gpu-kit` first.
#   tools/attn_device.sh [smoke|tests|race|bench|ncu ...]   (default: all of them)
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
OUT=${OUT:-/tmp/mobagen-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$root/build/gpu/lib:${LD_LIBRARY_PATH:-}"
export MOBAGEN_CACHE_DIR=${MOBAGEN_CACHE_DIR:-/tmp/mobagen-cache}
export MOBAGEN_TEST_ROOT="$root"
steps=${*:-smoke tests race bench ncu}
summary="$OUT/summary.txt"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }
note "gpu: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | head -1)"
for step in $steps; do
    start=$(date +%s)
    case "$step" in
    smoke)   # one small case first: a hang or a failure stops the call early
        MOBAGEN_TEST_QUICK=1 MOBAGEN_TEST_ONLY=${SMOKE_CASE:-paper_b64_k16_kconv3} timeout 90 build/gpu/tests/test_gpu_fwd > "$OUT/smoke.log" 2>&1
        rc=$?
        note "smoke: exit $rc, $(( $(date +%s) - start )) s"
        grep -E '^  [a-z0-9_]+ +runs|FAILED|PASSED|rror' "$OUT/smoke.log" | head -20 >> "$summary"
        [ $rc = 0 ] || break ;;
    tests)
        timeout 260 build/gpu/tests/test_gpu_fwd > "$OUT/test_gpu_fwd.log" 2>&1
        note "test_gpu_fwd: exit $?, $(( $(date +%s) - start )) s"
        grep -E '^  [a-z0-9_]+ +runs|seed|FAILED|PASSED|rror' "$OUT/test_gpu_fwd.log" | head -60 >> "$summary" ;;
    race)
        for tool in racecheck memcheck; do
            MOBAGEN_TEST_QUICK=1 MOBAGEN_TEST_ONLY=${RACE_CASE:-d64_b128_k4_lq_ne_lk} timeout 150 compute-sanitizer \
                --tool $tool --error-exitcode 9 build/gpu/tests/test_gpu_fwd > "$OUT/$tool.log" 2>&1
            note "$tool: exit $?, $(grep 'ERROR SUMMARY\|RACECHECK SUMMARY' "$OUT/$tool.log" | tail -1), $(( $(date +%s) - start )) s"
        done ;;
    bench)
        timeout 300 build/gpu/bench/bench_fwd --first ${BENCH_LENGTHS:-8192 32768 65536 131072} > "$OUT/bench.log" 2>&1
        note "bench: exit $?, $(( $(date +%s) - start )) s"
        cat "$OUT/bench.log" >> "$summary" ;;
    ncu)
        # The tile kernel of the first timed forward at 64K, B128 k8 (clocks as found).
        timeout 200 ncu --clock-control none -k regex:moba_attn_tiles -c 1 --set full \
            build/gpu/bench/bench_fwd --first 65536 > "$OUT/ncu.log" 2>&1
        note "ncu: exit $?, $(( $(date +%s) - start )) s"
        grep -E 'Duration|Compute \(SM\) Throughput|Memory Throughput|L2 Hit|Registers Per|Achieved Occupancy|Executed Ipc A|DRAM Throughput' "$OUT/ncu.log" | head -20 >> "$summary" ;;
    esac
done
echo "================ summary ================"
cat "$summary"
