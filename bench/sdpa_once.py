"""PyTorch SDPA (flash and cuDNN backends) on one MoBA shape, for `mobagen bench`: dense causal
attention over the same q, k, v sizes (k and v repeated to hq heads for GQA). Prints one
'name=microseconds' line per backend, 'nan' where a backend fails; exits 3 without PyTorch.
  python3 sdpa_once.py BATCH HQ HKV SEQLEN HEAD_DIM DTYPE CAUSAL"""
import sys


def main():
    try:
        import torch
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except Exception as e:  # noqa: BLE001 - report and let the caller say so
        print(f"PyTorch not available: {e}")
        return 3
    if not torch.cuda.is_available():
        print("PyTorch not available: no CUDA device for torch")
        return 3
    b, hq, hkv, L, d = (int(x) for x in sys.argv[1:6])
    dtype = torch.bfloat16 if sys.argv[6] == "bf16" else torch.float16
    causal = sys.argv[7] == "1"
    g = torch.Generator(device="cuda").manual_seed(L)
    q = torch.randn(b, hq, L, d, device="cuda", dtype=dtype, generator=g)
    k, v = (torch.randn(b, hkv, L, d, device="cuda", dtype=dtype, generator=g)
            .repeat_interleave(hq // hkv, dim=1) for _ in range(2))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for name, backend in (("sdpa_flash", SDPBackend.FLASH_ATTENTION),
                          ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
        try:
            with sdpa_kernel(backend):
                times = []
                for i in range(30):
                    start.record()
                    F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    end.record()
                    torch.cuda.synchronize()
                    if i >= 5:
                        times.append(start.elapsed_time(end) * 1e3)
            times.sort()
            print(f"{name}={times[len(times) // 2]:.1f}")
        except Exception as e:  # noqa: BLE001
            print(f"{name}=nan ({str(e).splitlines()[0][:80]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
