"""Peers on the same card, same shapes as bench_fwd (batch 2, 16 heads, d 128, causal, bf16):
PyTorch SDPA with its flash (FA2 class) and cuDNN backends, and FlexAttention with a causal
block mask. Median ms over several runs (triton.testing.do_bench), forward only."""
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

B, H, D = 2, 16, 128
LENGTHS = [int(x) for x in sys.argv[1:]] or [8192, 32768, 65536]


def sdpa(backend, q, k, v):
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def main():
    print(f"peers on {torch.cuda.get_device_name()}, torch {torch.__version__}; "
          f"batch {B}, heads {H}, d {D}, causal, bf16; median ms")
    flex = None
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        flex = torch.compile(flex_attention)
    except Exception as e:  # noqa: BLE001 - report and go on without it
        print(f"flex attention unavailable: {e}")
    print(f"{'L':>6} {'sdpa_flash':>11} {'sdpa_cudnn':>11} {'flex_causal':>12}")
    for L in LENGTHS:
        g = torch.Generator(device="cuda").manual_seed(L)
        q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16, generator=g)
                   for _ in range(3))
        row = [L]
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION):
            try:
                row.append(do_bench(lambda: sdpa(backend, q, k, v), warmup=50, rep=300,
                                    return_mode="median"))
            except Exception as e:  # noqa: BLE001
                print(f"{backend} failed at {L}: {e}")
                row.append(float("nan"))
        if flex is not None:
            try:
                t0 = time.time()
                mask = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, L, L)
                flex(q, k, v, block_mask=mask)
                torch.cuda.synchronize()
                row.append(do_bench(lambda: flex(q, k, v, block_mask=mask), warmup=50, rep=300,
                                    return_mode="median"))
                print(f"(flex compile and first run at {L}: {time.time() - t0:.1f} s)")
            except Exception as e:  # noqa: BLE001
                print(f"flex failed at {L}: {e}")
                row.append(float("nan"))
        else:
            row.append(float("nan"))
        print(f"{row[0]:>6} {row[1]:>11.3f} {row[2]:>11.3f} {row[3]:>12.3f}", flush=True)


if __name__ == "__main__":
    main()
