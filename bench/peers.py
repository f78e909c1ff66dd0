"""Peers on the same card and shapes as bench_fwd (batch 2, 16 heads, causal, bf16): PyTorch
SDPA with its flash (FA2 class) and cuDNN backends, and FlexAttention with a causal block mask.
Forward only; median ms (triton.testing.do_bench) and the peak device memory of one call
(inputs included, as bench_fwd counts them).

    python3 peers.py [--csv FILE] [L[:d] ...]      (default: 8K..128K at d = 128, 32K at d = 64)
"""
import argparse
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

B, H = 2, 16
DEFAULT = ["8192", "32768", "65536", "131072", "32768:64"]


def sdpa(backend, q, k, v):
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def timed(fn):
    """Median ms and the peak bytes allocated during one call (inputs included)."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return do_bench(fn, warmup=50, rep=300, return_mode="median"), peak


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv")
    ap.add_argument("cases", nargs="*", default=DEFAULT)
    args = ap.parse_args()
    print(f"peers on {torch.cuda.get_device_name()}, torch {torch.__version__}; "
          f"batch {B}, heads {H}, causal, bf16; median ms, peak GiB")
    flex = None
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        flex = torch.compile(flex_attention)
    except Exception as e:  # noqa: BLE001 - report and go on without it
        print(f"flex attention unavailable: {e}")
    csv = open(args.csv, "w") if args.csv else None
    if csv:
        csv.write("L,d,flash_ms,cudnn_ms,flex_ms,flash_peak_bytes,cudnn_peak_bytes\n")
    print(f"{'L':>6} {'d':>4} {'sdpa_flash':>11} {'sdpa_cudnn':>11} {'flex_causal':>12} "
          f"{'flash_GiB':>10} {'cudnn_GiB':>10}")
    for case in args.cases:
        L, _, d = case.partition(":")
        L, D = int(L), int(d or 128)
        g = torch.Generator(device="cuda").manual_seed(L + D)
        q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16, generator=g)
                   for _ in range(3))
        times, peaks = [], []
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION):
            try:
                t, p = timed(lambda: sdpa(backend, q, k, v))
            except Exception as e:  # noqa: BLE001
                print(f"{backend} failed at {L}: {e}")
                t, p = float("nan"), 0
            times.append(t)
            peaks.append(p)
        t_flex = float("nan")
        if flex is not None:
            try:
                t0 = time.time()
                mask = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, L, L)
                flex(q, k, v, block_mask=mask)
                torch.cuda.synchronize()
                t_flex = do_bench(lambda: flex(q, k, v, block_mask=mask), warmup=50, rep=300,
                                  return_mode="median")
                print(f"(flex compile and first run at {L}: {time.time() - t0:.1f} s)")
            except Exception as e:  # noqa: BLE001
                print(f"flex failed at {L}: {e}")
        print(f"{L:>6} {D:>4} {times[0]:>11.3f} {times[1]:>11.3f} {t_flex:>12.3f} "
              f"{peaks[0] / 2**30:>10.2f} {peaks[1] / 2**30:>10.2f}", flush=True)
        if csv:
            csv.write(f"{L},{D},{times[0]:.4f},{times[1]:.4f},{t_flex:.4f},{peaks[0]},{peaks[1]}\n")
            csv.flush()
        del q, k, v
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
