"""Training step of the attention: forward + backward of mobagen's MoBA (through the PyTorch
binding) against PyTorch SDPA's flash and cuDNN backends, on the same tensors in the same run.
Batch 2, 16 heads (q = kv), d = 128, causal, bf16; MoBA at B128/k8, B64/k16, B32/k32.

For each length L, one set of leaves q, k, v [2*L, 16, 128] and one dL/do serve every system
(SDPA sees them as [2, 16, L, 128] views). Per system: one untimed call (kernel build or load,
cuDNN plans), a call with the peak memory counter reset (torch.cuda.max_memory_allocated:
inputs, outputs, saved tensors, workspaces and gradients), warm-ups, then CUDA-event timings of
whole forward + backward steps, median reported (the repetitions adapt to a time budget, at
least --min-reps). mobagen's forward alone is timed too, so that the backward's share shows.
An out-of-memory error is recorded ("oom") and the run goes on.

    python3 bench/bench_train.py [--csv FILE] [--lengths 8192,32768,...] [--configs 128:8,64:16]
                                 [--systems mobagen,flash,cudnn] [--budget SECONDS]
"""
import argparse
import gc
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BATCH, HEADS, HEAD_DIM = 2, 16, 128
LENGTHS = [8192, 32768, 65536, 131072]
CONFIGS = [(128, 8), (64, 16), (32, 32)]
SYSTEMS = ("mobagen", "flash", "cudnn")
COLUMNS = ["L", "block_size", "top_k", "system", "status", "median_ms", "min_ms", "reps",
           "peak_bytes", "fwd_ms", "selection_bytes"]


def timed(step, budget_s, min_reps, max_reps, warmup):
    """(median ms, min ms, reps, peak bytes) of step(), or raises (OOM included)."""
    step()                                   # build, load, plan
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    step()
    torch.cuda.synchronize()
    once = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated()
    for _ in range(warmup):
        step()
    reps = max(min_reps, min(max_reps, int(budget_s / max(once, 1e-6))))
    start = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    end = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        start[i].record()
        step()
        end[i].record()
    torch.cuda.synchronize()
    times = [s.elapsed_time(e) for s, e in zip(start, end)]
    return statistics.median(times), min(times), reps, peak


def release():
    gc.collect()
    torch.cuda.empty_cache()


def empty_row(L, system, block, top_k, status):
    return dict(L=L, block_size=block or "", top_k=top_k or "", system=system, status=status,
                median_ms="nan", min_ms="nan", reps=0, peak_bytes=0, fwd_ms="nan",
                selection_bytes=BATCH * L * HEADS * top_k * 4 if top_k else 0)


def bench_length(L, configs, systems, args, mt, record):
    """Every system and configuration at one length, on one set of tensors."""
    g = torch.Generator(device="cuda").manual_seed(L)
    try:
        q, k, v = (torch.randn(BATCH * L, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16,
                               generator=g).requires_grad_() for _ in range(3))
        dout = torch.randn(BATCH * L, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=g)
    except torch.cuda.OutOfMemoryError:
        for name, block, top_k in [(s, None, None) for s in systems if s != "mobagen"] + \
                [("mobagen", b, t) for b, t in configs if "mobagen" in systems]:
            record(empty_row(L, name, block, top_k, "oom"))
        return
    leaves = (q, k, v)
    cu = torch.arange(BATCH + 1, dtype=torch.int32, device="cuda") * L
    dout4 = dout.view(BATCH, L, HEADS, HEAD_DIM).transpose(1, 2)

    def clear():
        for t in leaves:
            t.grad = None

    def sdpa_step(backend):
        def step():
            clear()
            q4, k4, v4 = (t.view(BATCH, L, HEADS, HEAD_DIM).transpose(1, 2) for t in leaves)
            with sdpa_kernel(backend):
                out = F.scaled_dot_product_attention(q4, k4, v4, is_causal=True)
            out.backward(dout4)
        return step

    def moba_step(block, top_k, backward=True):
        def step():
            clear()
            if backward:
                mt.moba_attn_varlen(q, k, v, cu, cu, L, L, block, top_k).backward(dout)
            else:
                with torch.no_grad():
                    mt.moba_attn_varlen(q, k, v, cu, cu, L, L, block, top_k)
        return step

    runs = []
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
        if name in systems:
            runs.append((name, None, None, sdpa_step(backend)))
    if "mobagen" in systems:
        for block, top_k in configs:
            runs.append(("mobagen", block, top_k, moba_step(block, top_k)))
    for name, block, top_k, step in runs:
        row = empty_row(L, name, block, top_k, "ok")
        try:
            med, low, reps, peak = timed(step, args.budget, args.min_reps, args.max_reps, args.warmup)
            row.update(median_ms="%.3f" % med, min_ms="%.3f" % low, reps=reps, peak_bytes=peak)
            if name == "mobagen":
                fwd = timed(moba_step(block, top_k, backward=False), args.budget / 4, args.min_reps,
                            args.max_reps, 1)[0]
                row["fwd_ms"] = "%.3f" % fwd
        except torch.cuda.OutOfMemoryError:
            row["status"] = "oom"
        except Exception as e:  # noqa: BLE001 - a failing system is recorded, the rest goes on
            row["status"] = "error"
            print("  %s L %d failed: %s" % (name, L, str(e).splitlines()[0] if str(e) else type(e).__name__),
                  flush=True)
        clear()
        release()
        record(row)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv")
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)),
                    help="comma-separated sequence lengths (262144 to try 256K)")
    ap.add_argument("--configs", default=",".join("%d:%d" % c for c in CONFIGS),
                    help="comma-separated BLOCK:TOPK")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--budget", type=float, default=2.0, help="timed seconds per system and case")
    ap.add_argument("--min-reps", type=int, default=3)
    ap.add_argument("--max-reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))
    import mobagen.torch as mt

    lengths = [int(x) for x in args.lengths.split(",") if x]
    configs = [tuple(int(v) for v in c.split(":")) for c in args.configs.split(",") if c]
    systems = [s for s in args.systems.split(",") if s]
    for s in systems:
        if s not in SYSTEMS:
            ap.error("unknown system %r (known: %s)" % (s, ", ".join(SYSTEMS)))
    print("bench_train on %s, torch %s; batch %d, heads %d, d %d, causal, bf16; forward + backward, "
          "median ms, peak GiB" % (torch.cuda.get_device_name(), torch.__version__, BATCH, HEADS, HEAD_DIM),
          flush=True)
    csv = open(args.csv, "w") if args.csv else None
    if csv:
        csv.write(",".join(COLUMNS) + "\n")

    def record(row):
        print("  %-7s L %6d B%-3s k%-3s %-6s %10s ms  (fwd %s ms)  peak %.2f GiB  reps %s" % (
            row["system"], row["L"], row["block_size"], row["top_k"], row["status"], row["median_ms"],
            row["fwd_ms"], row["peak_bytes"] / 2 ** 30, row["reps"]), flush=True)
        if csv:
            csv.write(",".join(str(row[c]) for c in COLUMNS) + "\n")
            csv.flush()

    for L in lengths:
        bench_length(L, configs, systems, args, mt, record)
        release()
    if csv:
        csv.close()


if __name__ == "__main__":
    main()
