#!/usr/bin/env bash
# Runs on the GPU machine, over a tree that carries build/mobagen, build/gpu and build/libmobagen.so
# (make gpu-kit here: the GPU machine has no Lua, libyaml or cmocka).
#   tools/device.sh [MODE ...]     modes: specs tests sanitizers python deploy bench bwd (default: all),
#                                  and decode (only when named)
#     specs       build every shipped spec for the device
#     tests       the GPU test programs (forward grid and long cases, deployment) and the example
#     sanitizers  compute-sanitizer memcheck of the grid, racecheck of the routing kernels
#     python      the PyTorch binding's tests over build/libmobagen.so
#     deploy      mobagen tune, bundle, inspect and bench from the bundle without NVRTC
#     bench       bench_fwd (BENCH_CASES="spec:L ..." narrows it), op creation cold and warm, peers
#     decode      test_gpu_decode, memcheck of one small decode case, bench_decode
#                 (DECODE_CASES="B:k:batch:ctx ...") and the dense peer (DECODE_PEERS="batch:ctx ...")
#     bwd         the backward: test_gpu_bwd, then bench_bwd (BWD_CASES="spec:L ..." narrows it)
# Each step runs under a time limit (STEP_LIMIT seconds, default 300). Only a few files come back
# from the device machine, so logs go into one folder packed into $OUT/logs.tgz after every step,
# next to summary.txt and the benchmark CSVs: a call cut short still returns what it did.
set -u
modes=" ${*:-all} "
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
RESULTS=${OUT:-/tmp/mobagen-out}
OUT=$(mktemp -d /tmp/mobagen-logs.XXXXXX)
mkdir -p "$RESULTS"
export LD_LIBRARY_PATH="$root/build/gpu/lib:${LD_LIBRARY_PATH:-}"
export MOBAGEN_CACHE_DIR=${MOBAGEN_CACHE_DIR:-/tmp/mobagen-cache}
export MOBAGEN_TEST_ROOT="$root"
export PYTHONUNBUFFERED=1
limit=${STEP_LIMIT:-300}
summary="$OUT/summary.txt"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }
want() { [[ "$modes" == *" all "* || "$modes" == *" $1 "* ]]; }
save() {
    tar czf "$RESULTS/logs.tgz" -C "$OUT" .
    for f in summary.txt bench_fwd.csv peers.csv bench_bwd.csv bench_decode.csv peers_decode.csv; do [ -f "$OUT/$f" ] && cp "$OUT/$f" "$RESULTS/"; done
}
elapsed() { echo "$(( $(date +%s) - $1 )) s"; }
cmocka_counts() {
    echo "$(grep -o 'PASSED  \] [0-9]*' "$1" | grep -o '[0-9]*$' || echo 0) passed," \
         "$(grep -o 'FAILED  \] [0-9]*' "$1" | grep -o '[0-9]*$' || echo 0) failed"
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader \
    > "$OUT/gpu.txt" 2>&1
note "gpu: $(head -1 "$OUT/gpu.txt")"
build/mobagen doctor > "$OUT/doctor.txt" 2>&1
arch=$(sed -n 's/.*\(sm_[0-9]*a\?\), .*/\1/p' "$OUT/doctor.txt" | head -1)
case "$arch" in sm_90 | sm_100) arch="${arch}a" ;; esac   # the device's own 'a' target
note "arch: ${arch:-unknown}; cache $MOBAGEN_CACHE_DIR; modes:$modes"

if want specs; then
    start=$(date +%s)
    for s in specs/*.yaml; do
        timeout "$limit" build/mobagen build "$s" --arch "${arch:-sm_90a}" >> "$OUT/build.log" 2>&1 \
            || note "build FAILED: $s"
    done
    note "spec builds: $(grep -c 'variants' "$OUT/build.log") specs, $(grep -c FAILED "$OUT/build.log") failures, $(elapsed "$start")"
    save
fi

if want tests; then
    for t in build/gpu/tests/test_gpu_*; do
        [ -x "$t" ] || continue
        name=$(basename "$t")
        [ "$name" = test_gpu_bwd ] && want bwd && continue   # the bwd mode runs it
        start=$(date +%s)
        timeout "$limit" "$t" > "$OUT/$name.log" 2>&1
        rc=$?
        grep -E '^  [a-z0-9_]+ +runs|seed|device' "$OUT/$name.log" | tee -a "$summary"
        note "$name: exit $rc, $(cmocka_counts "$OUT/$name.log"), $(elapsed "$start")"
        grep -E 'error|Error|FAIL' "$OUT/$name.log" | head -20 | tee -a "$summary"
        save
    done
    timeout 60 build/gpu/example_fwd specs/default.yaml > "$OUT/example.log" 2>&1
    note "example_fwd: exit $?: $(tail -1 "$OUT/example.log")"
    save
fi

if want sanitizers && command -v compute-sanitizer >/dev/null; then
    # Out-of-bounds or misaligned accesses and uninitialised reads, on the grid of small cases.
    start=$(date +%s)
    MOBAGEN_TEST_QUICK=1 timeout "$limit" compute-sanitizer --tool memcheck --error-exitcode 9 \
        build/gpu/tests/test_gpu_fwd > "$OUT/memcheck.log" 2>&1
    note "memcheck: exit $?, $(grep -c 'Invalid\|Uninitialized\|misaligned' "$OUT/memcheck.log") reports, $(grep 'ERROR SUMMARY' "$OUT/memcheck.log" | tail -1), $(elapsed "$start")"
    # Shared-memory races of the routing kernels (heaps, staged tiles), on two small cases.
    start=$(date +%s)
    for c in ties_d64 d128_b16_k64; do
        MOBAGEN_TEST_QUICK=1 MOBAGEN_TEST_CASE=$c timeout "$limit" compute-sanitizer --tool racecheck \
            --kernel-name kns=moba_route --error-exitcode 9 build/gpu/tests/test_gpu_fwd \
            >> "$OUT/racecheck.log" 2>&1
        note "racecheck ($c, routing kernels): exit $?, $(grep 'RACECHECK SUMMARY\|ERROR SUMMARY' "$OUT/racecheck.log" | tail -1)"
    done
    note "racecheck: $(elapsed "$start")"
    # The backward on one small case: bounds, and the races of its shared-memory tiles.
    start=$(date +%s)
    for tool in memcheck racecheck; do
        MOBAGEN_TEST_QUICK=1 MOBAGEN_TEST_CASE=d64_b128_k4_lq timeout "$limit" compute-sanitizer \
            --tool $tool --error-exitcode 9 build/gpu/tests/test_gpu_bwd > "$OUT/bwd_$tool.log" 2>&1
        note "$tool (backward, d64_b128_k4_lq): exit $?, $(grep 'RACECHECK SUMMARY\|ERROR SUMMARY' "$OUT/bwd_$tool.log" | tail -1)"
    done
    note "backward sanitizers: $(elapsed "$start")"
    # Append and decode kernels on one small case (GQA 4, chunks of 4, key conv).
    start=$(date +%s)
    MOBAGEN_TEST_CASE=b32_k32_conv3 timeout "$limit" compute-sanitizer --tool memcheck --error-exitcode 9 \
        build/gpu/tests/test_gpu_decode > "$OUT/memcheck_decode.log" 2>&1
    note "memcheck (decode): exit $?, $(grep 'ERROR SUMMARY' "$OUT/memcheck_decode.log" | tail -1), $(elapsed "$start")"
    save
fi

if [[ "$modes" == *" decode "* ]]; then
    start=$(date +%s)
    timeout "$limit" build/gpu/tests/test_gpu_decode > "$OUT/test_gpu_decode.log" 2>&1
    note "test_gpu_decode: exit $?, $(cmocka_counts "$OUT/test_gpu_decode.log"), $(elapsed "$start")"
    grep -E '^  [a-z0-9_]+ +rows|seed|error|FAIL|failed' "$OUT/test_gpu_decode.log" | head -30 | tee -a "$summary"
    save
    if command -v compute-sanitizer >/dev/null; then
        start=$(date +%s)
        MOBAGEN_TEST_CASE=b32_k32_conv3 timeout "$limit" compute-sanitizer --tool memcheck --error-exitcode 9 \
            build/gpu/tests/test_gpu_decode > "$OUT/memcheck_decode.log" 2>&1
        note "memcheck (decode): exit $?, $(grep 'ERROR SUMMARY' "$OUT/memcheck_decode.log" | tail -1), $(elapsed "$start")"
        save
    fi
    start=$(date +%s)
    timeout "$limit" build/gpu/bench/bench_decode --csv "$OUT/bench_decode.csv" ${DECODE_CASES:-} \
        > "$OUT/bench_decode.log" 2>&1 || note "bench_decode FAILED"
    note "bench_decode: $(elapsed "$start")"
    cat "$OUT/bench_decode.log" >> "$summary"
    save
    start=$(date +%s)
    timeout "$limit" python3 bench/peers_decode.py --csv "$OUT/peers_decode.csv" ${DECODE_PEERS:-} \
        > "$OUT/peers_decode.log" 2>&1 || note "peers_decode.py FAILED"
    note "peers_decode: $(elapsed "$start")"
    cat "$OUT/peers_decode.log" >> "$summary"
    save
fi

if want python; then
    # The PyTorch binding over build/libmobagen.so; here a missing torch, GPU or library fails.
    start=$(date +%s)
    MOBAGEN_LIBRARY="$root/build/libmobagen.so" MOBAGEN_TEST_REQUIRE_GPU=1 \
        timeout "$limit" python3 python/tests/run.py -v > "$OUT/python.log" 2>&1
    note "python: exit $?, $(tail -1 "$OUT/python.log"), $(elapsed "$start")"
    grep -E 'FAILED|ERROR|Error:' "$OUT/python.log" | head -20 | tee -a "$summary"
    save
fi

# Mode train: forward + backward through the PyTorch binding against SDPA flash and cuDNN, on
# the same tensors in one process (bench/bench_train.py; TRAIN_ARGS="--lengths 8192,32768 ..."
# narrows it); bench/report_train.py turns its CSV into the RESULTS.md table. No tuning
# database: the default choice is timed, as in mode bench.
if want train; then
    start=$(date +%s)
    MOBAGEN_LIBRARY="$root/build/libmobagen.so" MOBAGEN_TUNING_DB=/nonexistent/none.db \
        timeout "$limit" python3 bench/bench_train.py --csv "$RESULTS/bench_train.csv" ${TRAIN_ARGS:-} \
        > "$OUT/bench_train.log" 2>&1 || note "bench_train FAILED (exit $?)"
    note "bench_train: $(elapsed "$start")"
    grep -E '^  |failed' "$OUT/bench_train.log" >> "$summary"
    # The CSV goes straight to the results (row by row), so a call cut short keeps its rows.
    [ -f "$RESULTS/bench_train.csv" ] && python3 bench/report_train.py "$RESULTS/bench_train.csv" >> "$summary" 2>&1
    save
fi

# Deployment: tune the default spec, bundle it with its records, then bench from the bundle
# with NVRTC made unavailable (docs/tuning.md, docs/bundles.md).
if want deploy; then
    spec=specs/default.yaml bundle=/tmp/mobagen-deploy.mgb
    export MOBAGEN_TUNING_DB="$OUT/tuning.db"
    start=$(date +%s)
    timeout "$limit" build/mobagen tune "$spec" --seqlens 4096,16384 > "$OUT/tune.log" 2>&1
    note "tune: exit $?, $(grep -c '^  [0-9]' "$OUT/tune.log") variants timed, $(elapsed "$start")"
    grep -E '^(seqlen|  rank|  1 )' "$OUT/tune.log" | tee -a "$summary"
    build/mobagen bundle "$spec" --arch "${arch:-sm_90a}" -o "$bundle" --tuning "$MOBAGEN_TUNING_DB" \
        > "$OUT/bundle.log" 2>&1
    note "bundle: exit $?: $(tail -1 "$OUT/bundle.log")"
    build/mobagen inspect "$bundle" > "$OUT/inspect.log" 2>&1
    note "inspect: exit $?: $(sed -n 2p "$OUT/inspect.log")"
    MOBAGEN_NVRTC=/nonexistent/libnvrtc.so MOBAGEN_BUNDLE="$bundle" MOBAGEN_TUNING_DB=/nonexistent/none.db \
        timeout "$limit" build/mobagen bench "$spec" --seqlens 4096,16384 > "$OUT/bench_deploy.log" 2>&1
    note "bench from the bundle without NVRTC: exit $?"
    cat "$OUT/bench_deploy.log" >> "$summary"
    unset MOBAGEN_TUNING_DB
    save
fi

if want bench; then
    # bench_fwd covers every shipped configuration; the peers run on the same card in the same
    # call; bench/report.py joins the two CSVs. No tuning database: the default choice timed is
    # the documented heuristic.
    start=$(date +%s)
    MOBAGEN_TUNING_DB=/nonexistent/none.db timeout "$limit" build/gpu/bench/bench_fwd \
        --csv "$OUT/bench_fwd.csv" ${BENCH_CASES:-} > "$OUT/bench_fwd.log" 2>&1 || note "bench_fwd FAILED"
    note "bench_fwd: $(elapsed "$start")"
    grep -v '^    ' "$OUT/bench_fwd.log" | tail -n 30 >> "$summary"
    save
    # Op creation in a fresh process: cold (an empty cache: every kernel compiled), then warm.
    MOBAGEN_CACHE_DIR=$(mktemp -d /tmp/mobagen-cold.XXXXXX) timeout 120 build/gpu/bench/op_create \
        specs/default.yaml > "$OUT/op_create.log" 2>&1 || note "op_create FAILED"
    grep -E 'process|cpu side|cached' "$OUT/op_create.log" | tee -a "$summary"
    start=$(date +%s)
    timeout "$limit" python3 bench/peers.py --csv "$OUT/peers.csv" ${PEER_CASES:-} > "$OUT/peers.log" 2>&1 \
        || note "peers.py FAILED"
    note "peers: $(elapsed "$start")"
    tail -n 8 "$OUT/peers.log" >> "$summary"
    save
fi
if want bwd; then
    start=$(date +%s)
    timeout "$limit" build/gpu/tests/test_gpu_bwd > "$OUT/bwd_tests.log" 2>&1
    rc=$?
    grep -E 'seed|device|worst' "$OUT/bwd_tests.log" | tee -a "$summary"
    note "test_gpu_bwd: exit $rc, $(cmocka_counts "$OUT/bwd_tests.log"), $(elapsed "$start")"
    grep -E 'error|Error|FAIL' "$OUT/bwd_tests.log" | head -20 | tee -a "$summary"
    save
    start=$(date +%s)
    MOBAGEN_TUNING_DB=/nonexistent/none.db timeout "$limit" build/gpu/bench/bench_bwd \
        --csv "$OUT/bench_bwd.csv" ${BWD_CASES:-} > "$OUT/bench_bwd.log" 2>&1 || note "bench_bwd FAILED"
    note "bench_bwd: $(elapsed "$start")"
    cat "$OUT/bench_bwd.log" >> "$summary"
    save
fi
save
echo "================ summary ================"
cat "$summary"
