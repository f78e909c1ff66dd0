"""MoBA attention on torch tensors: the varlen call (FlashAttention's packed layout) and a
padded-batch wrapper ([batch, seqlen, heads, head_dim], like flash_attn_func)."""
import torch

from ..errors import ArgumentError
from ._ops import moba_attn_varlen_fwd


def _grad_needed(*tensors):
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _results(out, lse, selection, return_lse, return_selection):
    if not (return_lse or return_selection):
        return out
    extra = ((lse,) if return_lse else ()) + ((selection,) if return_selection else ())
    return (out,) + extra


def moba_attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, block_size,
                     top_k, causal=True, conv_weight=None, softmax_scale=None, deterministic=False,
                     return_lse=False, return_selection=False):
    """Mixture of Block Attention over a packed variable-length batch.

    q [total_q, hq, d], k and v [total_k, hkv, d] (bf16 or fp16, on one CUDA device, last dim
    contiguous, row/head strides multiples of 8 elements); cu_seqlens_q/k int32 [batch + 1] on
    that device; max_seqlen_q/k at least every sequence's length (as in FlashAttention: they
    size the launch, and the device's cu_seqlens are not read back). conv_weight
    [hkv, W, d] of q's dtype enables the key convolution k' = k + SiLU(causal depthwise conv).
    softmax_scale defaults to 1/sqrt(d). The routing is exact and deterministic; the forward's
    attention adds each query's fp32 partial sums in the order its blocks finish, so two runs
    agree to rounding, not bit for bit. deterministic=True makes the backward's gradients
    bitwise identical across runs (as in FlashAttention, at some cost in speed).

    Differentiable in q, k, v and conv_weight (and through lse when it is returned and used);
    routing is a hard choice and passes no gradient. When a gradient will be needed the forward
    keeps its selection (4 bytes per query, head and top_k slot) for the backward, which then
    does not route again.

    Returns out [total_q, hq, d] (q's dtype), plus lse [total_q, hq] float32 (natural log, -inf
    for a row that sees no key) when return_lse, plus selection [total_q, hq, top_k] int32 (the
    routed block indices within each sequence, ascending, -1 padded) when return_selection.
    Runs on torch.cuda.current_stream(); works under torch.compile(fullgraph=True)."""
    if not isinstance(deterministic, bool):
        raise ArgumentError("deterministic must be a bool, got %r" % (deterministic,))
    keep_selection = return_selection or _grad_needed(q, k, v, conv_weight)
    out, lse, selection = moba_attn_varlen_fwd(
        q, k, v, cu_seqlens_q, cu_seqlens_k, conv_weight, max_seqlen_q, max_seqlen_k, block_size,
        top_k, causal, softmax_scale, keep_selection, deterministic)
    return _results(out, lse, selection, return_lse, return_selection)


def _packed(name, t, heads_name):
    if not isinstance(t, torch.Tensor) or t.dim() != 4:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ArgumentError("%s must be 4-D [batch, seqlen, %s, head_dim], got %s"
                            % (name, heads_name, shape))
    b, s, h, d = t.shape
    return t.reshape(b * s, h, d)   # a view whenever batch and seqlen strides allow one


def moba_attn_func(q, k, v, block_size, top_k, causal=True, conv_weight=None, softmax_scale=None,
                   deterministic=False, return_lse=False, return_selection=False):
    """moba_attn_varlen for padded batches: q [batch, seqlen_q, hq, d], k and v
    [batch, seqlen_k, hkv, d]; every sequence has the full length. Returns out
    [batch, seqlen_q, hq, d], lse [batch, hq, seqlen_q] (as flash_attn_func), selection
    [batch, seqlen_q, hq, top_k]."""
    q3 = _packed("q", q, "num_heads_q")
    k3 = _packed("k", k, "num_heads_k")
    v3 = _packed("v", v, "num_heads_k")
    batch, seqlen_q, hq = q.shape[0], q.shape[1], q.shape[2]
    if k.shape[0] != batch or v.shape[0] != batch:
        raise ArgumentError("k and v must have q's batch %d, got %d and %d"
                            % (batch, k.shape[0], v.shape[0]))
    seqlen_k = k.shape[1]
    steps = torch.arange(batch + 1, dtype=torch.int32, device=q.device)
    cu_q, cu_k = steps * seqlen_q, steps * seqlen_k
    result = moba_attn_varlen(q3, k3, v3, cu_q, cu_k, seqlen_q if batch else 0,
                              seqlen_k if batch else 0, block_size, top_k, causal, conv_weight,
                              softmax_scale, deterministic, True, return_selection)
    out, lse = result[0], result[1]
    out = out.view(batch, seqlen_q, hq, q.shape[3])
    lse = lse.view(batch, seqlen_q, hq).transpose(1, 2)
    selection = result[2].view(batch, seqlen_q, hq, -1) if return_selection else None
    return _results(out, lse, selection, return_lse, return_selection)
