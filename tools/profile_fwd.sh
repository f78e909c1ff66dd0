#!/usr/bin/env bash
# ncu profile of the forward's kernels on the device machine, over a tree that carries
# build/gpu (make gpu-kit): one bench_fwd case, the first COUNT launches whose name matches
# REGEX (the first forward of the case: routing, the list kernels, then the chunk groups).
#   tools/profile_fwd.sh NAME SPEC:L [COUNT] [REGEX]
# Writes $OUT/NAME.txt (the details page) and $OUT/NAME.csv (the chosen metrics per launch).
set -u
name=$1 case=$2 count=${3:-12} regex=${4:-moba_(route|attn)}
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-/tmp/mobagen-out}
mkdir -p "$out"
export LD_LIBRARY_PATH="$root/build/gpu/lib:${LD_LIBRARY_PATH:-}"
export MOBAGEN_CACHE_DIR=${MOBAGEN_CACHE_DIR:-/tmp/mobagen-cache} MOBAGEN_TEST_ROOT="$root"
export MOBAGEN_TUNING_DB=/nonexistent/none.db
metrics=gpu__time_duration.sum,sm__throughput.avg.pct_of_peak_sustained_elapsed
metrics+=,lts__t_sectors_op_red.sum,lts__t_sectors_op_atom.sum,lts__t_sectors_op_read.sum
metrics+=,lts__t_sector_hit_rate.pct,lts__throughput.avg.pct_of_peak_sustained_elapsed
metrics+=,dram__bytes_read.sum,dram__bytes_write.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed
metrics+=,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active
metrics+=,sm__warps_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active
metrics+=,l1tex__throughput.avg.pct_of_peak_sustained_active
timeout 240 ncu --clock-control none --set full --metrics "$metrics" --kernel-name "regex:$regex" \
    --launch-count "$count" -f -o "/tmp/$name" "$root/build/gpu/bench/bench_fwd" "$case" \
    > "$out/$name.log" 2>&1
echo "ncu $name: exit $?"
ncu -i "/tmp/$name.ncu-rep" --page details > "$out/$name.txt" 2>&1
ncu -i "/tmp/$name.ncu-rep" --page raw --csv --metrics "$metrics" > "$out/$name.csv" 2>&1
grep -E 'moba_|Duration|Compute \(SM\) Throughput|Memory Throughput|L2 Hit|Achieved Occupancy|Registers Per' "$out/$name.txt" | head -120
