"""MobaAttention: a drop-in attention layer (the core attention, after the q/k/v projections)
that owns the key-convolution weight."""
import math

import torch
from torch import nn

from ..errors import ArgumentError
from ..spec import SpecParams
from .functional import moba_attn_func, moba_attn_varlen


class MobaAttention(nn.Module):
    """softmax attention restricted, per query, to the top_k key blocks of block_size keys.

    forward(q, k, v) takes [batch, seqlen, heads, head_dim] tensors (seqlen_q may differ from
    seqlen_k: causal positions are aligned bottom-right), or packed [total, heads, head_dim]
    tensors with cu_seqlens_q/k and max_seqlen_q/k as in moba_attn_varlen. With conv_width W > 0
    the layer owns conv_weight [num_kv_heads, W, head_dim], an nn.Parameter initialised small
    (normal, std conv_init_std), cast to q's dtype at each call so that it may be kept in fp32
    (its gradient flows back through the cast). deterministic=True makes the backward's
    gradients bitwise identical across runs."""

    def __init__(self, head_dim, num_heads, num_kv_heads=None, block_size=128, top_k=8,
                 conv_width=0, causal=True, softmax_scale=None, conv_init_std=0.02, device=None,
                 dtype=None, deterministic=False):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if not isinstance(num_heads, int) or not isinstance(num_kv_heads, int) or num_kv_heads < 1 \
                or num_heads < 1 or num_heads % num_kv_heads:
            raise ArgumentError("num_heads (%r) must be a positive multiple of num_kv_heads (%r)"
                                % (num_heads, num_kv_heads))
        # The same checks as a spec: a bad size fails here, not at the first forward.
        SpecParams(head_dim, block_size, top_k, causal, conv_width, "bfloat16",
                   num_heads // num_kv_heads)
        if softmax_scale is not None and not (math.isfinite(softmax_scale) and softmax_scale > 0):
            raise ArgumentError("softmax_scale must be finite and > 0, got %r" % (softmax_scale,))
        self.head_dim, self.num_heads, self.num_kv_heads = head_dim, num_heads, num_kv_heads
        self.block_size, self.top_k, self.conv_width = block_size, top_k, conv_width
        self.causal, self.softmax_scale = bool(causal), softmax_scale
        if not isinstance(deterministic, bool):
            raise ArgumentError("deterministic must be a bool, got %r" % (deterministic,))
        self.deterministic = deterministic
        if conv_width:
            self.conv_weight = nn.Parameter(
                torch.empty(num_kv_heads, conv_width, head_dim, device=device, dtype=dtype))
            self.conv_init_std = conv_init_std
            self.reset_parameters()
        else:
            self.register_parameter("conv_weight", None)

    def reset_parameters(self):
        if self.conv_weight is not None:
            with torch.no_grad():
                self.conv_weight.normal_(0.0, self.conv_init_std)

    def extra_repr(self):
        return ("head_dim=%d, num_heads=%d, num_kv_heads=%d, block_size=%d, top_k=%d, "
                "conv_width=%d, causal=%s" % (self.head_dim, self.num_heads, self.num_kv_heads,
                                              self.block_size, self.top_k, self.conv_width,
                                              self.causal))

    def forward(self, q, k, v, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None,
                max_seqlen_k=None):
        weight = None if self.conv_weight is None else self.conv_weight.to(q.dtype)
        if cu_seqlens_q is None and cu_seqlens_k is None:
            return moba_attn_func(q, k, v, self.block_size, self.top_k, self.causal, weight,
                                  self.softmax_scale, self.deterministic)
        if cu_seqlens_q is None or cu_seqlens_k is None or max_seqlen_q is None or max_seqlen_k is None:
            raise ArgumentError("packed inputs need cu_seqlens_q, cu_seqlens_k, max_seqlen_q and "
                                "max_seqlen_k together")
        return moba_attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                self.block_size, self.top_k, self.causal, weight, self.softmax_scale,
                                self.deterministic)


__all__ = ["MobaAttention"]
