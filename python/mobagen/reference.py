"""MoBA in plain PyTorch, written from shared/moba.md: the oracle of the binding's GPU tests and,
through autograd, of the backward's gradients. Readable rather than fast (it materialises the
[L_q, heads, L_k] score matrix of each sequence); any device, computed in float64 by default.

Semantics (moba.md):
- key convolution (conv_weight [hkv, W, d], tap l multiplies k_{t-l}):
  k'_t = k_t + SiLU(sum_l w_l * k_{t-l}), causal, zero left padding, within each sequence;
- blocks of block_size keys, the last one partial; centroid = mean of the block's (real) keys;
- gate score s(t, j) = q_t . centroid_j (no softmax scale); query head h routes against kv head
  h // (hq / hkv);
- causal: query row r sits at key position t = r + L_k - L_q (bottom-right aligned); its own
  block t // block_size is always selected and counts as one of the top_k; the other picks are
  whole blocks before t; t < 0 selects nothing (o = 0, lse = -inf);
- non-causal: plain top_k over all blocks;
- ties: the higher score wins, equal scores go to the lower block index;
- attention: softmax(scale * q K_S^T + causal token mask) V_S over the selected blocks' keys;
  lse is the natural-log sum of exps; a row that sees no key gives o = 0, lse = -inf.
Routing is a hard selection: no gradient flows through the gate scores."""
import collections
import math

import torch
import torch.nn.functional as F

Reference = collections.namedtuple("Reference", "out lse selection")


def key_conv(k, conv_weight):
    """k' of one sequence: k [L, hkv, d], conv_weight [hkv, W, d] (or None: k itself)."""
    if conv_weight is None:
        return k
    length = k.shape[0]
    acc = torch.zeros_like(k)
    for tap in range(min(conv_weight.shape[1], length)):
        shifted = torch.cat([k.new_zeros((tap,) + k.shape[1:]), k[:length - tap]])
        acc = acc + conv_weight[:, tap, :] * shifted
    return k + F.silu(acc)


def centroids(kprime, block_size):
    """[n_blocks, hkv, d] means of each block's keys, the partial last block over its real keys."""
    length = kprime.shape[0]
    n = -(-length // block_size)
    padded = torch.cat([kprime, kprime.new_zeros((n * block_size - length,) + kprime.shape[1:])])
    sums = padded.reshape(n, block_size, *kprime.shape[1:]).sum(1)
    counts = torch.clamp(length - torch.arange(n, device=kprime.device) * block_size, max=block_size)
    return sums / counts.to(sums.dtype)[:, None, None]


def gate_scores(q, kprime, block_size):
    """[L_q, hq, n_blocks] gate scores q_t . centroid_j of one sequence (GQA broadcast)."""
    cent = centroids(kprime, block_size)
    group = q.shape[1] // kprime.shape[1]
    return torch.einsum("qhd,nhd->qhn", q, cent.repeat_interleave(group, dim=1))


def key_positions(length_q, length_k, device):
    """Key position t of each query row, bottom-right aligned."""
    return torch.arange(length_q, device=device) + (length_k - length_q)


def route(scores, length_k, block_size, top_k, causal):
    """[L_q, hq, n] bool: the blocks each (query, head) selects."""
    length_q, hq, n = scores.shape
    chosen = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if n == 0 or length_q == 0:
        return chosen
    blocks = torch.arange(n, device=scores.device)
    if causal:
        t = key_positions(length_q, length_k, scores.device)[:, None, None]
        own = torch.div(t, block_size, rounding_mode="floor")
        candidate = (blocks + 1) * block_size <= t
        picks, reserved = top_k - 1, (blocks == own) & (t >= 0)
    else:
        candidate = torch.ones_like(chosen)
        picks, reserved = top_k, torch.zeros_like(chosen)
    masked = torch.where(candidate, scores, torch.full_like(scores, -math.inf))
    # A stable descending sort keeps equal scores in index order: the lower block wins a tie.
    order = torch.sort(masked, dim=-1, descending=True, stable=True).indices[..., :picks]
    taken = torch.gather(candidate.expand_as(chosen), -1, order)
    chosen.scatter_(-1, order, taken)
    return chosen | reserved


def selection_of(chosen, top_k):
    """[L, hq, top_k] int32 ascending block indices, -1 padded, from a chosen mask."""
    n = chosen.shape[-1]
    index = torch.arange(n, device=chosen.device).expand_as(chosen)
    ordered = torch.sort(torch.where(chosen, index, torch.full_like(index, n)), dim=-1).values
    ordered = torch.cat([ordered, ordered.new_full(ordered.shape[:-1] + (top_k,), n)], -1)[..., :top_k]
    return torch.where(ordered == n, torch.full_like(ordered, -1), ordered).to(torch.int32)


def chosen_of(selection, n):
    """The inverse of selection_of: [L, hq, n] bool from [L, hq, top_k] indices (-1 = none)."""
    chosen = torch.zeros(selection.shape[:-1] + (n + 1,), dtype=torch.bool, device=selection.device)
    index = torch.where(selection < 0, torch.full_like(selection, n), selection).long()
    chosen.scatter_(-1, index, True)
    return chosen[..., :n]


def attention(q, kprime, v, chosen, block_size, causal, scale):
    """(o [L_q, hq, d], lse [L_q, hq]) over the chosen blocks' keys of one sequence."""
    length_q, hq, _ = q.shape
    length_k, hkv, _ = kprime.shape
    group = hq // hkv
    block_of_key = torch.div(torch.arange(length_k, device=q.device), block_size, rounding_mode="floor")
    visible = chosen[:, :, block_of_key] if length_k else chosen.new_zeros((length_q, hq, 0))
    if causal:
        t = key_positions(length_q, length_k, q.device)
        visible = visible & (torch.arange(length_k, device=q.device)[None, None, :] <= t[:, None, None])
    s = scale * torch.einsum("qhd,khd->qhk", q, kprime.repeat_interleave(group, dim=1))
    s = s.masked_fill(~visible, -math.inf)
    lse = torch.logsumexp(s, dim=-1) if length_k else s.new_full((length_q, hq), -math.inf)
    finite_lse = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    p = torch.where(visible, torch.exp(s - finite_lse[..., None]), torch.zeros_like(s))
    return torch.einsum("qhk,khd->qhd", p, v.repeat_interleave(group, dim=1)), lse


def moba_attn_varlen_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, block_size, top_k, causal=True,
                               conv_weight=None, softmax_scale=None, selection=None,
                               dtype=torch.float64, kprime_dtype=None):
    """The MoBA forward over a packed batch, in `dtype`: Reference(out, lse, selection).

    Layouts as mobagen.torch.moba_attn_varlen. selection, when given ([total_q, hq, top_k]
    block indices, -1 padded, e.g. the GPU's), replaces routing: the attention then runs over
    those blocks, which separates routing near-ties from attention errors in tests.
    kprime_dtype (e.g. q.dtype) rounds k' to that dtype when there is a key convolution, as the
    kernels store it, before routing and attention (its gradient passes straight through the
    rounding). out and lse are differentiable in q, k, v
    and conv_weight."""
    cu_q = [int(x) for x in cu_seqlens_q.tolist()]
    cu_k = [int(x) for x in cu_seqlens_k.tolist()]
    hq, d = q.shape[1], q.shape[2]
    scale = 1.0 / math.sqrt(d) if softmax_scale is None else softmax_scale
    qf, kf, vf = q.to(dtype), k.to(dtype), v.to(dtype)
    wf = None if conv_weight is None else conv_weight.to(dtype)
    outs, lses, sels = [], [], []
    for b in range(len(cu_q) - 1):
        qs, ks, vs = qf[cu_q[b]:cu_q[b + 1]], kf[cu_k[b]:cu_k[b + 1]], vf[cu_k[b]:cu_k[b + 1]]
        kprime = key_conv(ks, wf)
        if wf is not None and kprime_dtype is not None:
            # The rounded values, with the exact gradient: a cast's backward would round the
            # gradient through k' as well, which the kernels do not do.
            kprime = kprime + (kprime.to(kprime_dtype).to(dtype) - kprime).detach()
        n = -(-ks.shape[0] // block_size)
        if selection is None:
            with torch.no_grad():
                scores = gate_scores(qs.detach(), kprime.detach(), block_size)
                chosen = route(scores, ks.shape[0], block_size, top_k, causal)
        else:
            chosen = chosen_of(selection[cu_q[b]:cu_q[b + 1]].to(q.device), n)
        o, lse = attention(qs, kprime, vs, chosen, block_size, causal, scale)
        outs.append(o)
        lses.append(lse)
        sels.append(selection_of(chosen, top_k))
    out = torch.cat(outs) if outs else qf.new_zeros((0, hq, d))
    lse = torch.cat(lses) if lses else qf.new_zeros((0, hq))
    sel = torch.cat(sels) if sels else torch.zeros((0, hq, top_k), dtype=torch.int32, device=q.device)
    return Reference(out, lse, sel)
