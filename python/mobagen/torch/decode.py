"""Serving with MoBA on PyTorch tensors: a paged KV cache with incremental block centroids,
`append` of new tokens and `decode` of the newest queries (docs/decode.md), over libmobagen's
mobagen_append / mobagen_decode on the current CUDA stream.

    cache = PagedKVCache.allocate(batch=8, n_pages=4096, page_size=16, max_pages=512, hkv=8,
                                  head_dim=128, block_size=128, top_k=8, gqa_group=4, device="cuda")
    cache.page_table.copy_(...)                                    # the caller manages pages
    append(cache, k, v, cu_seqlens_new, max_new)                   # prefill or a step's tokens
    out, lse = decode(cache, q, cu_seqlens_q, max_q_len=1, max_seqlen=4096)
    truncate(cache, drop=rejected)                                 # speculative rollback

No host synchronisation and no allocation but the workspace (from PyTorch's caching allocator):
a step can be captured in a CUDA graph when the workspace is."""
import ctypes
from dataclasses import dataclass
from typing import Optional

import torch

from .. import _capi, _capi_decode
from ..errors import ArgumentError
from ..spec import SpecParams
from . import _runtime

_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16"}


@dataclass
class PagedKVCache:
    """The cache's tensors (docs/decode.md, "Cache layout") and the MoBA spec that reads them."""
    k_pages: torch.Tensor          # [n_pages, page_size, hkv, head_dim]: k after the key convolution
    v_pages: torch.Tensor
    kraw_pages: Optional[torch.Tensor]   # raw k, only with conv_width > 0
    centroid_sum: torch.Tensor     # float32 [batch, max_blocks, hkv, head_dim]
    page_table: torch.Tensor       # int32 [batch, max_pages]
    seq_lens: torch.Tensor         # int32 [batch]
    error: torch.Tensor            # int32 [1]: device-side error bits (check())
    spec: SpecParams

    @classmethod
    def allocate(cls, batch, n_pages, page_size, max_pages, hkv, head_dim, block_size, top_k,
                 gqa_group=1, conv_width=0, dtype=torch.bfloat16, device="cuda"):
        if dtype not in _DTYPE_NAMES:
            raise ArgumentError("dtype must be torch.bfloat16 or torch.float16, got %s" % dtype)
        spec = SpecParams(head_dim, block_size, top_k, True, conv_width, _DTYPE_NAMES[dtype], gqa_group)
        pages = (n_pages, page_size, hkv, head_dim)
        max_blocks = -(-max_pages * page_size // block_size)
        return cls(torch.empty(pages, dtype=dtype, device=device), torch.empty(pages, dtype=dtype, device=device),
                   torch.empty(pages, dtype=dtype, device=device) if conv_width else None,
                   torch.empty((batch, max_blocks, hkv, head_dim), dtype=torch.float32, device=device),
                   torch.zeros((batch, max_pages), dtype=torch.int32, device=device),
                   torch.zeros((batch,), dtype=torch.int32, device=device),
                   torch.zeros((1,), dtype=torch.int32, device=device), spec)

    @property
    def batch(self):
        return self.seq_lens.shape[0]

    def to_c(self):
        for name in ("k_pages", "v_pages", "centroid_sum", "page_table", "seq_lens", "error"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or not t.is_cuda or not t.is_contiguous():
                raise ArgumentError("cache.%s must be a contiguous CUDA tensor" % name)
        n_pages, page_size, hkv, head_dim = self.k_pages.shape
        c = _capi_decode.KvCache()
        c.n_pages, c.page_size, c.max_pages = n_pages, page_size, self.page_table.shape[1]
        c.hkv, c.head_dim, c.dtype = hkv, head_dim, _capi.DTYPE_CODES[self.spec.dtype]
        ptr = lambda t: t.data_ptr() if t is not None and t.numel() else 0  # noqa: E731
        c.k_pages, c.v_pages, c.kraw_pages = ptr(self.k_pages), ptr(self.v_pages), ptr(self.kraw_pages)
        c.centroid_sum, c.page_table = ptr(self.centroid_sum), ptr(self.page_table)
        c.seq_lens, c.error = ptr(self.seq_lens), ptr(self.error)
        return c

    def check(self):
        """Synchronises and raises for device-side errors (a bad page, a full row, q_len > L, a
        truncation past the length)."""
        _call(self, lambda rt, op, fns, c: fns.kv_cache_check(op, ctypes.byref(c), _stream(self.seq_lens), None),
              "mobagen_kv_cache_check")


def _stream(t):
    return ctypes.c_void_p(torch.cuda.current_stream(t.device).cuda_stream)


def _call(cache, body, what):
    device = cache.seq_lens.device
    rt = _runtime.runtime(device.index if device.index is not None else torch.cuda.current_device())
    fns = _capi_decode.functions(rt.lib)
    c = cache.to_c()
    with rt.lock:
        op = rt.op(cache.spec)
        result = body(rt, op, fns, c)
        status = result[0] if isinstance(result, tuple) else result
        rt.lib.check(status, lambda: rt.lib.op_errmsg(op), what)
    return result


def append(cache: PagedKVCache, k: torch.Tensor, v: torch.Tensor, cu_seqlens_new: torch.Tensor, max_new: int,
           conv_weight: Optional[torch.Tensor] = None):
    """Writes rows of k, v [total_new, hkv, head_dim] (sequence b: rows cu_seqlens_new[b] ..
    cu_seqlens_new[b+1]-1) at positions seq_lens[b].., updates the centroid sums and seq_lens."""
    for name, t in (("k", k), ("v", v)):
        if t.dim() != 3 or t.stride(2) != 1 or (t.shape[0] > 1 and t.stride(1) != t.shape[2]):
            raise ArgumentError("%s must be [total_new, hkv, head_dim] with heads packed" % name)
    a = _capi_decode.AppendArgs()
    a.batch, a.max_new, a.total_new = cache.batch, int(max_new), k.shape[0]
    a.k, a.v = (k.data_ptr() if k.numel() else 0), (v.data_ptr() if v.numel() else 0)
    a.k_row_stride = k.stride(0) if k.shape[0] > 1 else 0
    a.v_row_stride = v.stride(0) if v.shape[0] > 1 else 0
    a.cu_seqlens_new = cu_seqlens_new.data_ptr()
    a.conv_weight = conv_weight.data_ptr() if conv_weight is not None else 0
    _call(cache, lambda rt, op, fns, c: fns.append(op, ctypes.byref(c), ctypes.byref(a), _stream(k)),
          "mobagen_append")


def truncate(cache: PagedKVCache, drop: Optional[torch.Tensor] = None, new_lens: Optional[torch.Tensor] = None):
    """Removes the last drop[b] tokens of sequence b (or keeps new_lens[b] of them): exactly one
    of the two int32 [batch] CUDA tensors. The cut block's centroid sum is recomputed on the
    device from its kept keys, so the cache equals one that never got the dropped tokens. A
    length outside 0..seq_lens[b] leaves that sequence as it was and sets an error bit that
    cache.check() raises. No host synchronisation: capturable in a CUDA graph."""
    if (drop is None) == (new_lens is None):
        raise ArgumentError("truncate takes exactly one of drop and new_lens")
    name, t = ("drop", drop) if drop is not None else ("new_lens", new_lens)
    if (not isinstance(t, torch.Tensor) or t.dtype != torch.int32 or not t.is_cuda or t.dim() != 1
            or t.shape[0] != cache.batch or not t.is_contiguous()):
        raise ArgumentError("%s must be a contiguous int32 CUDA tensor of shape [%d]" % (name, cache.batch))
    a = _capi_decode.TruncateArgs()
    a.batch = cache.batch
    ptr = t.data_ptr() if cache.batch else 0
    if drop is not None:
        a.drop = ptr
    else:
        a.new_lens = ptr
    _call(cache, lambda rt, op, fns, c: fns.kv_truncate(op, ctypes.byref(c), ctypes.byref(a), _stream(t)),
          "mobagen_kv_truncate")


def decode(cache: PagedKVCache, q: torch.Tensor, cu_seqlens_q: torch.Tensor, max_q_len: int, max_seqlen: int,
           softmax_scale: Optional[float] = None, return_selection: bool = False):
    """MoBA attention of q [total_q, hq, head_dim] (sequence b's last q_len_b cached tokens)
    against the cache: (out, lse) or (out, lse, selection [total_q, hq, top_k] int32)."""
    if q.dim() != 3 or q.stride(2) != 1 or (q.shape[0] > 1 and q.stride(1) != q.shape[2]):
        raise ArgumentError("q must be [total_q, hq, head_dim] with heads packed")
    total_q, hq, head_dim = q.shape
    out = torch.empty((total_q, hq, head_dim), dtype=q.dtype, device=q.device)
    lse = torch.empty((total_q, hq), dtype=torch.float32, device=q.device)
    sel = torch.empty((total_q if return_selection else 0, hq, cache.spec.top_k), dtype=torch.int32, device=q.device)
    a = _capi_decode.DecodeArgs()
    a.batch, a.hq, a.max_q_len, a.total_q, a.max_seqlen = cache.batch, hq, int(max_q_len), total_q, int(max_seqlen)
    a.q, a.out = (q.data_ptr() if q.numel() else 0), (out.data_ptr() if out.numel() else 0)
    a.lse, a.sel = (lse.data_ptr() if lse.numel() else 0), (sel.data_ptr() if sel.numel() else 0)
    a.q_row_stride = q.stride(0) if total_q > 1 else 0
    a.cu_seqlens_q = cu_seqlens_q.data_ptr()
    a.softmax_scale = float(softmax_scale or 0.0)

    def body(rt, op, fns, c):
        size = ctypes.c_size_t()
        st = fns.decode_workspace_size(op, ctypes.byref(c), ctypes.byref(a), ctypes.byref(size))
        if st != _capi.OK:
            return st
        workspace = torch.empty(size.value, dtype=torch.uint8, device=q.device)
        return fns.decode(op, ctypes.byref(c), ctypes.byref(a), workspace.data_ptr() if size.value else 0,
                          size.value, _stream(q))

    _call(cache, body, "mobagen_decode")
    return (out, lse, sel) if return_selection else (out, lse)
