"""Dense decode peer for bench_decode (same card, same shapes): one new query token per
sequence, 32 query heads / 8 kv heads, d 128, bf16, against a contiguous k/v cache of the whole
context, through PyTorch SDPA (enable_gqa; the backend PyTorch picks for q_len 1). Median ms
(triton.testing.do_bench, L2 flushed by it between repetitions), and the bandwidth on the
2 * batch * hkv * ctx * d * 2 bytes of k and v it must read.

    python3 peers_decode.py [--csv FILE] [batch:ctx ...]
"""
import argparse

import torch
import torch.nn.functional as F
from triton.testing import do_bench

HQ, HKV, D = 32, 8, 128
DEFAULT = ["1:8192", "1:131072", "1:524288", "8:8192", "8:32768", "8:131072", "8:524288",
           "32:32768", "32:131072", "64:8192", "64:65536"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv")
    ap.add_argument("cases", nargs="*", default=DEFAULT)
    args = ap.parse_args()
    print(f"dense decode (SDPA, enable_gqa) on {torch.cuda.get_device_name()}, torch {torch.__version__}; "
          f"hq {HQ} hkv {HKV} d {D} bf16, q_len 1")
    csv = open(args.csv, "w") if args.csv else None
    if csv:
        csv.write("batch,ctx,dense_us,dense_gbps\n")
    print(f"{'batch':>5} {'ctx':>7} {'dense_us':>10} {'GB/s':>8}")
    for case in args.cases:
        batch, ctx = (int(x) for x in case.split(":"))
        try:
            g = torch.Generator(device="cuda").manual_seed(batch * 7 + ctx)
            q = torch.randn(batch, HQ, 1, D, device="cuda", dtype=torch.bfloat16, generator=g)
            k = torch.randn(batch, HKV, ctx, D, device="cuda", dtype=torch.bfloat16, generator=g)
            v = torch.randn(batch, HKV, ctx, D, device="cuda", dtype=torch.bfloat16, generator=g)
            fn = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)  # noqa: E731
            ms = do_bench(fn, warmup=25, rep=200, return_mode="median")
        except torch.OutOfMemoryError:
            print(f"{batch:5d} {ctx:7d} {'OOM':>10}")
            continue
        gbps = 2 * batch * HKV * ctx * D * 2 / (ms * 1e-3) / 1e9
        print(f"{batch:5d} {ctx:7d} {ms * 1e3:10.1f} {gbps:8.0f}")
        if csv:
            csv.write(f"{batch},{ctx},{ms * 1e3:.2f},{gbps:.1f}\n")
        del q, k, v
        torch.cuda.empty_cache()
    if csv:
        csv.close()


if __name__ == "__main__":
    main()
