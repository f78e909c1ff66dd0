"""The custom ops mobagen::moba_attn_varlen_fwd and mobagen::moba_attn_varlen_bwd: their real
implementations (libmobagen on the current CUDA stream), their fake implementations (shapes and
dtypes for torch.compile and meta tensors), and the forward's autograd rule, which calls the
backward op so that torch.compile traces forward and backward without a graph break."""
from typing import Optional, Tuple

import torch

from ..errors import ArgumentError
from . import _runtime

OP_NAME = "mobagen::moba_attn_varlen_fwd"
BWD_OP_NAME = "mobagen::moba_attn_varlen_bwd"


@torch.library.custom_op(OP_NAME, mutates_args=())
def moba_attn_varlen_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
                         conv_weight: Optional[torch.Tensor], max_seqlen_q: int, max_seqlen_k: int,
                         block_size: int, top_k: int, causal: bool, softmax_scale: Optional[float],
                         return_selection: bool, deterministic: bool = False
                         ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # One implementation for every device type, so that a CPU tensor reaches the validator
    # and gets "q must be on a CUDA device" instead of a dispatcher message. deterministic
    # governs the backward only: it is an argument here so that the autograd rule sees it.
    return _runtime.forward(q, k, v, cu_seqlens_q, cu_seqlens_k, conv_weight, max_seqlen_q,
                            max_seqlen_k, block_size, top_k, causal, softmax_scale,
                            return_selection)


def _check_rank_and_dtype(named, dtype):
    """Checks that need no concrete sizes, so that a wrong rank or dtype fails at trace time;
    the real implementations run the full validator on every call."""
    for name, t, rank, want in named:
        if t is None:
            continue
        if t.dim() != rank:
            raise ArgumentError("%s must be %d-D, got shape %s" % (name, rank, tuple(t.shape)))
        want = dtype if want is None else want
        if t.dtype != want:
            raise ArgumentError("%s must be %s, got %s" % (name, want, t.dtype))


def _check_q_dtype(q):
    if q.dtype not in (torch.bfloat16, torch.float16):
        raise ArgumentError("q must be bfloat16 or float16, got %s" % q.dtype)


@moba_attn_varlen_fwd.register_fake
def _fake(q, k, v, cu_seqlens_q, cu_seqlens_k, conv_weight, max_seqlen_q, max_seqlen_k,
          block_size, top_k, causal, softmax_scale, return_selection, deterministic=False):
    if q.dim() != 3:
        raise ArgumentError("q must be 3-D, got shape %s" % (tuple(q.shape),))
    _check_q_dtype(q)
    _check_rank_and_dtype((("k", k, 3, None), ("v", v, 3, None), ("conv_weight", conv_weight, 3, None),
                           ("cu_seqlens_q", cu_seqlens_q, 1, torch.int32),
                           ("cu_seqlens_k", cu_seqlens_k, 1, torch.int32)), q.dtype)
    total_q, hq = q.shape[0], q.shape[1]
    out = q.new_empty((total_q, hq, q.shape[2]))
    lse = q.new_empty((total_q, hq), dtype=torch.float32)
    selection = q.new_empty((total_q if return_selection else 0, hq, top_k), dtype=torch.int32)
    return out, lse, selection


@torch.library.custom_op(BWD_OP_NAME, mutates_args=())
def moba_attn_varlen_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         out: torch.Tensor, lse: torch.Tensor, dlse: Optional[torch.Tensor],
                         selection: Optional[torch.Tensor], cu_seqlens_q: torch.Tensor,
                         cu_seqlens_k: torch.Tensor, conv_weight: Optional[torch.Tensor],
                         max_seqlen_q: int, max_seqlen_k: int, block_size: int, top_k: int,
                         causal: bool, softmax_scale: Optional[float], deterministic: bool
                         ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv, dconv_weight): dconv_weight is float32 [hkv, W, d], or [0] without a key
    convolution; out and lse are the forward's; dlse None: no gradient through the LSE;
    selection None or with no rows: routing runs again."""
    return _runtime.backward(dout, q, k, v, out, lse, dlse, selection, cu_seqlens_q, cu_seqlens_k,
                             conv_weight, max_seqlen_q, max_seqlen_k, block_size, top_k, causal,
                             softmax_scale, deterministic)


@moba_attn_varlen_bwd.register_fake
def _fake_bwd(dout, q, k, v, out, lse, dlse, selection, cu_seqlens_q, cu_seqlens_k, conv_weight,
              max_seqlen_q, max_seqlen_k, block_size, top_k, causal, softmax_scale, deterministic):
    if q.dim() != 3:
        raise ArgumentError("q must be 3-D, got shape %s" % (tuple(q.shape),))
    _check_q_dtype(q)
    _check_rank_and_dtype((("dout", dout, 3, None), ("k", k, 3, None), ("v", v, 3, None),
                           ("out", out, 3, None), ("lse", lse, 2, torch.float32),
                           ("dlse", dlse, 2, torch.float32), ("selection", selection, 3, torch.int32),
                           ("cu_seqlens_q", cu_seqlens_q, 1, torch.int32),
                           ("cu_seqlens_k", cu_seqlens_k, 1, torch.int32),
                           ("conv_weight", conv_weight, 3, None)), q.dtype)
    dq = q.new_empty(q.shape)
    dk = k.new_empty(k.shape)
    dv = v.new_empty(v.shape)
    dconv = q.new_empty(conv_weight.shape if conv_weight is not None else (0,), dtype=torch.float32)
    return dq, dk, dv, dconv


# The forward op's inputs, in order (setup_context and backward index them by these names).
_FWD_INPUTS = ("q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "conv_weight", "max_seqlen_q",
               "max_seqlen_k", "block_size", "top_k", "causal", "softmax_scale",
               "return_selection", "deterministic")


def _setup_context(ctx, inputs, output):
    named = dict(zip(_FWD_INPUTS, inputs))
    out, lse, selection = output
    # Unused outputs get None, not zeros: an LSE nobody differentiates costs no dlse pass.
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(selection)
    # The selection, when the forward produced it (moba_attn_varlen asks for it whenever a
    # gradient will be needed), spares the backward a second routing; without it (a direct op
    # call with return_selection=False) the library routes again.
    kept = selection if named["return_selection"] else None
    ctx.save_for_backward(named["q"], named["k"], named["v"], out, lse, kept,
                          named["cu_seqlens_q"], named["cu_seqlens_k"], named["conv_weight"])
    ctx.scalars = tuple(named[n] for n in ("max_seqlen_q", "max_seqlen_k", "block_size", "top_k",
                                           "causal", "softmax_scale", "deterministic"))


def _backward(ctx, grad_out, grad_lse, grad_selection):
    nothing = (None,) * len(_FWD_INPUTS)
    if grad_out is None and grad_lse is None:
        return nothing
    q, k, v, out, lse, selection, cu_q, cu_k, conv_weight = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv, dconv = moba_attn_varlen_bwd(grad_out, q, k, v, out, lse, grad_lse, selection,
                                             cu_q, cu_k, conv_weight, *ctx.scalars)
    need = ctx.needs_input_grad
    grads = [dq if need[0] else None, dk if need[1] else None, dv if need[2] else None, None, None,
             dconv.to(conv_weight.dtype) if conv_weight is not None and need[5] else None]
    return tuple(grads) + nothing[len(grads):]


moba_attn_varlen_fwd.register_autograd(_backward, setup_context=_setup_context)
