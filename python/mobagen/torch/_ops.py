"""The custom op mobagen::moba_attn_varlen_fwd: its real implementation (libmobagen on the
current CUDA stream), its fake implementation (shapes and dtypes for torch.compile and meta
tensors) and its autograd rule (the backward kernels do not exist yet: it says so)."""
from typing import Optional, Tuple

import torch

from ..errors import BACKWARD_UNAVAILABLE, ArgumentError
from . import _runtime

OP_NAME = "mobagen::moba_attn_varlen_fwd"


@torch.library.custom_op(OP_NAME, mutates_args=())
def moba_attn_varlen_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
                         conv_weight: Optional[torch.Tensor], max_seqlen_q: int, max_seqlen_k: int,
                         block_size: int, top_k: int, causal: bool, softmax_scale: Optional[float],
                         return_selection: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # One implementation for every device type, so that a CPU tensor reaches the validator
    # and gets "q must be on a CUDA device" instead of a dispatcher message.
    return _runtime.forward(q, k, v, cu_seqlens_q, cu_seqlens_k, conv_weight, max_seqlen_q,
                            max_seqlen_k, block_size, top_k, causal, softmax_scale,
                            return_selection)


@moba_attn_varlen_fwd.register_fake
def _fake(q, k, v, cu_seqlens_q, cu_seqlens_k, conv_weight, max_seqlen_q, max_seqlen_k,
          block_size, top_k, causal, softmax_scale, return_selection):
    # Checks that need no concrete sizes, so that a wrong rank or dtype fails at trace time;
    # the real implementation runs the full validator on every call.
    for name, t, rank in (("q", q, 3), ("k", k, 3), ("v", v, 3), ("cu_seqlens_q", cu_seqlens_q, 1),
                          ("cu_seqlens_k", cu_seqlens_k, 1)):
        if t.dim() != rank:
            raise ArgumentError("%s must be %d-D, got shape %s" % (name, rank, tuple(t.shape)))
    if q.dtype not in (torch.bfloat16, torch.float16):
        raise ArgumentError("q must be bfloat16 or float16, got %s" % q.dtype)
    for name, t in (("k", k), ("v", v), ("conv_weight", conv_weight)):
        if t is not None and t.dtype != q.dtype:
            raise ArgumentError("%s must have q's dtype %s, got %s" % (name, q.dtype, t.dtype))
    for name, t in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if t.dtype != torch.int32:
            raise ArgumentError("%s must be int32, got %s" % (name, t.dtype))
    total_q, hq = q.shape[0], q.shape[1]
    out = q.new_empty((total_q, hq, q.shape[2]))
    lse = q.new_empty((total_q, hq), dtype=torch.float32)
    selection = q.new_empty((total_q if return_selection else 0, hq, top_k), dtype=torch.int32)
    return out, lse, selection


def _setup_context(ctx, inputs, output):
    pass


def _backward(ctx, grad_out, grad_lse, grad_selection):
    raise NotImplementedError(BACKWARD_UNAVAILABLE)


moba_attn_varlen_fwd.register_autograd(_backward, setup_context=_setup_context)
