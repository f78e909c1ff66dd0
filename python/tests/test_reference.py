"""mobagen.reference (plain PyTorch MoBA) against a brute-force loop written from moba.md, against
the C reference (tests/ref/moba_ref.c), on the tie rule, and through autograd. CPU, float64."""
import ctypes
import math
import os
import unittest
from unittest import mock

import support
from support import torch

if torch is not None:
    from mobagen.reference import moba_attn_varlen_reference

# (seqlens_q, seqlens_k, hq, hkv, d, block_size, top_k, causal, conv_width)
CASES = [
    ([37], [37], 2, 2, 32, 8, 3, True, 0),
    ([20, 0, 33], [20, 5, 41], 4, 2, 32, 8, 2, True, 3),      # GQA, kconv, an empty query sequence
    ([9, 30], [25, 12], 3, 1, 32, 16, 2, True, 0),            # L_q < L_k and L_q > L_k (t < 0 rows)
    ([17, 23], [29, 0], 2, 2, 32, 8, 4, False, 2),            # non-causal, partial blocks, no keys
    ([40], [40], 2, 1, 64, 16, 8, True, 0),                   # top_k above the block count
]


def random_case(case, generator):
    lens_q, lens_k, hq, hkv, d, block, top_k, causal, width = case
    q = torch.randn(sum(lens_q), hq, d, generator=generator, dtype=torch.float64)
    k = torch.randn(sum(lens_k), hkv, d, generator=generator, dtype=torch.float64)
    v = torch.randn(sum(lens_k), hkv, d, generator=generator, dtype=torch.float64)
    w = 0.5 * torch.randn(hkv, width, d, generator=generator, dtype=torch.float64) if width else None
    cu_q = torch.tensor([0] + list(torch.tensor(lens_q).cumsum(0)), dtype=torch.int32)
    cu_k = torch.tensor([0] + list(torch.tensor(lens_k).cumsum(0)), dtype=torch.int32)
    return q, k, v, w, cu_q, cu_k


def brute_force(q, k, v, w, cu_q, cu_k, block, top_k, causal, scale):
    """One (row, head) at a time, straight from moba.md's text."""
    hq, hkv = q.shape[1], k.shape[1]
    out = torch.zeros_like(q)
    lse = torch.full(q.shape[:2], -math.inf, dtype=q.dtype)
    sel = torch.full(q.shape[:2] + (top_k,), -1, dtype=torch.int32)
    for b in range(len(cu_q) - 1):
        q0, q1, k0, k1 = int(cu_q[b]), int(cu_q[b + 1]), int(cu_k[b]), int(cu_k[b + 1])
        lq, lk = q1 - q0, k1 - k0
        kp = k[k0:k1].clone()
        if w is not None:
            for t in range(lk):
                acc = sum(w[:, l, :] * k[k0 + t - l] for l in range(w.shape[1]) if t - l >= 0)
                kp[t] = k[k0 + t] + acc * torch.sigmoid(acc)
        n = -(-lk // block)
        cent = [kp[j * block:min(lk, (j + 1) * block)].mean(0) for j in range(n)]
        for r in range(lq):
            t = r + lk - lq
            for h in range(hq):
                hk = h // (hq // hkv)
                score = [float(q[q0 + r, h] @ cent[j][hk]) for j in range(n)]
                if causal:
                    if t < 0:
                        continue
                    cand = sorted((j for j in range(n) if (j + 1) * block <= t), key=lambda j: (-score[j], j))
                    chosen = sorted([t // block] + cand[:top_k - 1])
                else:
                    chosen = sorted(sorted(range(n), key=lambda j: (-score[j], j))[:top_k])
                sel[q0 + r, h, :len(chosen)] = torch.tensor(chosen, dtype=torch.int32)
                keys = [i for j in chosen for i in range(j * block, min(lk, (j + 1) * block))
                        if not causal or i <= t]
                if not keys:
                    continue
                s = torch.stack([scale * (q[q0 + r, h] @ kp[i, hk]) for i in keys])
                m = torch.logsumexp(s, 0)
                lse[q0 + r, h] = m
                out[q0 + r, h] = sum(torch.exp(s[x] - m) * v[k0 + i, hk] for x, i in enumerate(keys))
    return out, lse, sel


@support.needs_torch
class AgainstBruteForce(unittest.TestCase):
    def test_cases(self):
        g = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
        for case in CASES:
            q, k, v, w, cu_q, cu_k = random_case(case, g)
            block, top_k, causal = case[5], case[6], case[7]
            scale = 1 / math.sqrt(q.shape[2])
            ref = moba_attn_varlen_reference(q, k, v, cu_q, cu_k, block, top_k, causal, w)
            out, lse, sel = brute_force(q, k, v, w, cu_q, cu_k, block, top_k, causal, scale)
            self.assertTrue(torch.equal(ref.selection, sel), case)
            torch.testing.assert_close(ref.out, out, rtol=1e-10, atol=1e-10, msg=str(case))
            torch.testing.assert_close(ref.lse, lse, rtol=1e-10, atol=1e-10, msg=str(case))

    def test_forced_selection_gives_the_same_answer(self):
        g = torch.Generator().manual_seed(7)
        q, k, v, w, cu_q, cu_k = random_case(CASES[1], g)
        ref = moba_attn_varlen_reference(q, k, v, cu_q, cu_k, 8, 2, True, w)
        again = moba_attn_varlen_reference(q, k, v, cu_q, cu_k, 8, 2, True, w, selection=ref.selection)
        self.assertTrue(torch.equal(ref.selection, again.selection))
        torch.testing.assert_close(ref.out, again.out, rtol=0, atol=0)

    def test_empty_batch_and_empty_keys(self):
        z = torch.zeros(0, 2, 32, dtype=torch.float64)
        ref = moba_attn_varlen_reference(z, z, z, torch.zeros(1, dtype=torch.int32),
                                         torch.zeros(1, dtype=torch.int32), 16, 2)
        self.assertEqual((ref.out.shape, ref.lse.shape, ref.selection.shape),
                         ((0, 2, 32), (0, 2), (0, 2, 2)))
        q = torch.randn(5, 2, 32, dtype=torch.float64)
        for causal in (True, False):
            ref = moba_attn_varlen_reference(q, z, z, torch.tensor([0, 5], dtype=torch.int32),
                                             torch.tensor([0, 0], dtype=torch.int32), 16, 2, causal)
            self.assertTrue(torch.equal(ref.out, torch.zeros_like(q)))
            self.assertTrue(bool(torch.all(ref.lse == -math.inf)))
            self.assertTrue(bool(torch.all(ref.selection == -1)))


@support.needs_torch
class TieRule(unittest.TestCase):
    """Equal gate scores go to the lower block index; higher scores win."""

    def test_equal_blocks(self):
        d, block = 32, 4
        base = torch.randn(block, 1, d, dtype=torch.float64)
        other = -base
        # Blocks 1 and 3 hold the same keys (equal centroids), and score above blocks 0 and 2.
        k = torch.cat([other, base, other * 2, base])
        q = base.mean(0, keepdim=True).expand(1, 1, d).clone()
        v = torch.randn_like(k)
        cu_q, cu_k = torch.tensor([0, 1], dtype=torch.int32), torch.tensor([0, 16], dtype=torch.int32)
        ref = moba_attn_varlen_reference(q, k, v, cu_q, cu_k, block, 1, causal=False)
        self.assertEqual(ref.selection.flatten().tolist(), [1])
        ref = moba_attn_varlen_reference(q, k, v, cu_q, cu_k, block, 2, causal=False)
        self.assertEqual(ref.selection.flatten().tolist(), [1, 3])
        # Causal, query at the last key: own block 3 plus the best earlier one, block 1.
        ref = moba_attn_varlen_reference(q, k, v, cu_q, cu_k, block, 2, causal=True)
        self.assertEqual(ref.selection.flatten().tolist(), [1, 3])
        # Causal with the own block elsewhere: blocks 1 and 3 tie for the single free slot.
        k2 = torch.cat([k, other])
        cu_k2 = torch.tensor([0, 20], dtype=torch.int32)
        ref = moba_attn_varlen_reference(q, k2, torch.randn_like(k2), cu_q, cu_k2, block, 2, causal=True)
        self.assertEqual(ref.selection.flatten().tolist(), [1, 4])


class RefCfg(ctypes.Structure):
    _fields_ = [("batch", ctypes.c_int), ("cu_seqlens_q", ctypes.POINTER(ctypes.c_int)),
                ("cu_seqlens_k", ctypes.POINTER(ctypes.c_int)), ("hq", ctypes.c_int),
                ("hkv", ctypes.c_int), ("d", ctypes.c_int), ("block_size", ctypes.c_int),
                ("top_k", ctypes.c_int), ("causal", ctypes.c_int), ("conv_width", ctypes.c_int),
                ("scale", ctypes.c_double)]


C_REF = os.path.join(support.REPO, "tests", "ref", "moba_ref.c")


@support.needs_torch
@support.needs_cc
@unittest.skipUnless(os.path.exists(C_REF), "tests/ref/moba_ref.c not in this tree")
class AgainstCReference(unittest.TestCase):
    """The two oracles of the project agree: selections exactly, outputs to double rounding."""

    def test_cases(self):
        lib = ctypes.CDLL(support.compile_c('#include "%s"\n' % C_REF, shared=True, libs=["-lm"]))
        g = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
        dbl = ctypes.POINTER(ctypes.c_double)
        for case in CASES:
            q, k, v, w, cu_q, cu_k = random_case(case, g)
            lens_q, _, hq, hkv, d, block, top_k, causal, width = case
            cq = (ctypes.c_int * len(cu_q))(*cu_q.tolist())
            ck = (ctypes.c_int * len(cu_k))(*cu_k.tolist())
            cfg = RefCfg(len(lens_q), cq, ck, hq, hkv, d, block, top_k, int(causal), width, 1 / math.sqrt(d))
            o, lse = torch.empty_like(q), torch.empty(q.shape[:2], dtype=torch.float64)
            sel = torch.empty(q.shape[:2] + (top_k,), dtype=torch.int32)
            wp = ctypes.cast(w.data_ptr(), dbl) if w is not None else None
            rc = lib.moba_ref_forward(ctypes.byref(cfg), ctypes.cast(q.data_ptr(), dbl),
                                      ctypes.cast(k.data_ptr(), dbl), ctypes.cast(v.data_ptr(), dbl), wp,
                                      ctypes.cast(o.data_ptr(), dbl), ctypes.cast(lse.data_ptr(), dbl),
                                      ctypes.cast(sel.data_ptr(), ctypes.POINTER(ctypes.c_int)))
            self.assertEqual(rc, 0, case)
            ref = moba_attn_varlen_reference(q, k, v, cu_q, cu_k, block, top_k, causal, w)
            self.assertTrue(torch.equal(ref.selection, sel), case)
            torch.testing.assert_close(ref.out, o, rtol=1e-10, atol=1e-10, msg=str(case))
            torch.testing.assert_close(ref.lse, lse, rtol=1e-10, atol=1e-10, msg=str(case))


@support.needs_torch
class Gradients(unittest.TestCase):
    def test_gradcheck(self):
        g = torch.Generator().manual_seed(3)
        # The reference takes any head_dim: a small one keeps the numeric Jacobian cheap.
        q, k, v, w, cu_q, cu_k = random_case(([6, 9], [10, 7], 2, 1, 8, 4, 2, True, 2), g)
        inputs = [t.requires_grad_() for t in (q, k, v, w)]

        def f(q, k, v, w):
            r = moba_attn_varlen_reference(q, k, v, cu_q, cu_k, 4, 2, True, w)
            finite = torch.isfinite(r.lse)
            return r.out, torch.where(finite, r.lse, torch.zeros_like(r.lse))
        self.assertTrue(torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, fast_mode=True))

    def test_rounded_kprime_passes_the_exact_gradient(self):
        """kprime_dtype rounds k' (the values the kernels see) but not the gradient through it:
        the gradients equal those of the same forward with the rounding added as a constant."""
        from mobagen.reference import key_conv
        g = torch.Generator().manual_seed(5)
        q, k, v, w, cu_q, cu_k = random_case(([12], [12], 2, 1, 8, 4, 2, True, 2), g)
        rounding = (key_conv(k, w).to(torch.bfloat16).double() - key_conv(k, w))
        self.assertGreater(float(rounding.abs().max()), 0)
        upstream = torch.randn(12, 2, 8, generator=g, dtype=torch.float64)

        def grads(kprime_dtype, offset):
            import mobagen.reference as reference
            kk, ww = k.clone().requires_grad_(), w.clone().requires_grad_()
            conv = reference.key_conv
            shifted = conv if offset is None else (lambda k_, w_: conv(k_, w_) + offset)
            with mock.patch.object(reference, "key_conv", shifted):
                r = moba_attn_varlen_reference(q, kk, v, cu_q, cu_k, 4, 2, True, ww, kprime_dtype=kprime_dtype)
            (r.out * upstream).sum().backward()
            return kk.grad, ww.grad
        got, want = grads(torch.bfloat16, None), grads(None, rounding)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


if __name__ == "__main__":
    unittest.main()
