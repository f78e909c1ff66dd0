"""The PyTorch binding on a CUDA device: forward against mobagen.reference on fresh random inputs
(bf16 and fp16, GQA, key convolution, varlen with empty sequences, L_q != L_k, non-causal),
empty batches and empty keys, the optional outputs, strided inputs, the padded wrapper and
module, torch.compile(fullgraph=True), opcheck, and the caller's CUDA stream.

Routing is checked first, allowing swaps between blocks whose gate scores tie up to rounding;
the attention is then checked against the reference run on the GPU's own selection, so that a
legitimate near-tie swap does not show up as an output error (as tests/test_gpu_fwd.c does).
Outputs come from PyTorch's caching allocator: each forward runs right after a NaN-filled block
of the outputs' size was freed, so an unwritten output shows up as NaN."""
import math
import os
import threading
import unittest

import support
from support import torch

if torch is not None:
    import mobagen.torch as mt
    from mobagen import ArgumentError
    from mobagen.reference import gate_scores, key_conv, moba_attn_varlen_reference
    from mobagen.torch import _runtime

SEED = int(os.environ.get("MOBAGEN_TEST_SEED") or int.from_bytes(os.urandom(4), "little"))

# name: (seqlens_q, seqlens_k, hq, hkv, d, block_size, top_k, causal, conv_width, dtype)
CASES = {
    "bf16_causal": ([300], [300], 4, 4, 128, 64, 4, True, 0, "bfloat16"),
    "fp16_gqa_kconv_varlen": ([100, 0, 257], [100, 50, 257], 8, 2, 64, 32, 3, True, 3, "float16"),
    "bf16_lq_ne_lk": ([64, 200], [256, 100], 4, 4, 64, 32, 2, True, 0, "bfloat16"),
    "bf16_noncausal_gqa_empty_keys": ([130, 20], [77, 0], 4, 2, 128, 16, 8, False, 0, "bfloat16"),
    "fp16_d32_top1_kconv5": ([500], [500], 2, 1, 32, 128, 1, True, 5, "float16"),
}
TOLERANCE = {"bfloat16": (2e-2, 6e-2), "float16": (4e-3, 1e-2)}   # relative L2, max abs


def cu_seqlens(lens):
    return torch.tensor([0] + [sum(lens[:i + 1]) for i in range(len(lens))], dtype=torch.int32, device="cuda")


def make_case(case, generator):
    lens_q, lens_k, hq, hkv, d, block, top_k, causal, width, dtype = case
    dt = getattr(torch, dtype)
    q = torch.randn(sum(lens_q), hq, d, device="cuda", generator=generator).to(dt)
    k = torch.randn(sum(lens_k), hkv, d, device="cuda", generator=generator).to(dt)
    v = torch.randn(sum(lens_k), hkv, d, device="cuda", generator=generator).to(dt)
    w = (0.5 * torch.randn(hkv, width, d, device="cuda", generator=generator)).to(dt) if width else None
    return dict(q=q, k=k, v=v, cu_seqlens_q=cu_seqlens(lens_q), cu_seqlens_k=cu_seqlens(lens_k),
                max_seqlen_q=max(lens_q), max_seqlen_k=max(lens_k), block_size=block, top_k=top_k,
                causal=causal, conv_weight=w)


def poison(nbytes):
    """Leaves a freed NaN-filled block of at least nbytes in the caching allocator."""
    block = torch.full((max(nbytes, 512) // 4 + 1,), float("nan"), device="cuda")
    del block


def same_up_to_rounding(a, b):
    """Two runs of the forward agree to rounding: its attention adds each query's fp32 partial
    sums in whatever order the CTAs reach them, so the bits may differ, never the values."""
    return (a.shape == b.shape and a.dtype == b.dtype and
            torch.allclose(a.float(), b.float(), rtol=2 ** -6, atol=1e-5))


def run(args, **kw):
    q = args["q"]
    poison(q.numel() * q.element_size())
    return mt.moba_attn_varlen(**args, return_lse=True, return_selection=True, **kw)


class Checks:
    def check_selection(self, args, selection):
        """GPU routing against the reference's: equal, or swapped only between near-ties."""
        ref = moba_attn_varlen_reference(**_ref_args(args))
        self.assertEqual(selection.shape, ref.selection.shape)
        diff = (selection != ref.selection).any(-1).nonzero().tolist()
        self.assertLessEqual(len(diff), max(2, selection.shape[0] * selection.shape[1] // 100),
                             "too many routing differences: %s" % diff[:10])
        cu_q, cu_k = args["cu_seqlens_q"].tolist(), args["cu_seqlens_k"].tolist()
        for row, head in diff:
            b = max(i for i in range(len(cu_q) - 1) if cu_q[i] <= row)
            k_seq = args["k"][cu_k[b]:cu_k[b + 1]].double()
            w = args["conv_weight"]
            kp = key_conv(k_seq, None if w is None else w.double())
            if w is not None:
                kp = kp.to(w.dtype).double()   # as the kernels store k'
            q_row = args["q"][row:row + 1].double()
            scores = gate_scores(q_row, kp, args["block_size"])[0, head]
            picks = selection[row, head].tolist()
            gpu = set(picks) - {-1}
            want = set(ref.selection[row, head].tolist()) - {-1}
            label = "row %d head %d: GPU %s, reference %s" % (row, head, picks, sorted(want))
            self.assertEqual(picks, sorted(gpu) + [-1] * (len(picks) - len(gpu)), label + ": not ascending, -1 padded")
            self.assertEqual(len(gpu), len(want), label)
            block, n = args["block_size"], len(scores)
            if args["causal"]:
                t = row - cu_q[b] + (cu_k[b + 1] - cu_k[b]) - (cu_q[b + 1] - cu_q[b])
                self.assertIn(t // block, gpu, label + ": own block missing")
                self.assertTrue(all((j + 1) * block <= t for j in gpu - {t // block}), label + ": a block after t")
            self.assertTrue(all(0 <= j < n for j in gpu), label + ": a block out of range")
            tol = 1e-4 * float(q_row[0, head].abs().sum()) * float(scores.abs().max() + 1) + 1e-6
            weakest = min(float(scores[j]) for j in want - gpu)
            for j in gpu - want:
                self.assertLessEqual(abs(float(scores[j]) - weakest), tol,
                                     "row %d head %d: GPU chose block %d over %s" % (row, head, j, want - gpu))

    def check_outputs(self, args, out, lse, selection, softmax_scale=None):
        ref = moba_attn_varlen_reference(**_ref_args(args), softmax_scale=softmax_scale, selection=selection)
        self.assertEqual((out.shape, out.dtype), (args["q"].shape, args["q"].dtype))
        self.assertEqual((lse.shape, lse.dtype), (args["q"].shape[:2], torch.float32))
        self.assertFalse(bool(torch.isnan(out).any()), "out has unwritten (NaN) entries")
        self.assertFalse(bool(torch.isnan(lse).any()), "lse has unwritten (NaN) entries")
        empty = torch.isinf(ref.lse)
        self.assertTrue(torch.equal(torch.isinf(lse) & (lse < 0), empty), "rows without keys differ")
        self.assertTrue(bool((out[empty] == 0).all()), "a row without keys is not 0")
        if (~empty).any():
            err = (out.double() - ref.out)[~empty]
            rel = float(err.norm() / ref.out[~empty].norm().clamp_min(1e-30))
            rel_tol, abs_tol = TOLERANCE[str(args["q"].dtype).replace("torch.", "")]
            self.assertLess(rel, rel_tol, "relative L2 error of out")
            self.assertLess(float(err.abs().max()), abs_tol, "max abs error of out")
            lse_err = (lse.double() - ref.lse)[~empty].abs() / ref.lse[~empty].abs().clamp_min(1)
            # Twice tests/test_gpu_fwd.c's bound: fp32 dot products that grow with d.
            self.assertLess(float(lse_err.max()), 2e-4 * max(1.0, args["q"].shape[2] / 64), "lse error")


def _ref_args(args):
    """The reference's arguments for one call, k' rounded to the inputs' dtype as the kernels
    store it."""
    ref = {k: args[k] for k in ("q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "block_size",
                                "top_k", "causal", "conv_weight")}
    ref["kprime_dtype"] = args["q"].dtype
    return ref


@support.needs_gpu
class Forward(unittest.TestCase, Checks):
    def setUp(self):
        self.gen = torch.Generator(device="cuda").manual_seed(SEED)

    def test_cases_against_reference(self):
        for name, case in CASES.items():
            with self.subTest(case=name, seed=SEED), torch.no_grad():
                args = make_case(case, self.gen)
                out, lse, selection = run(args)
                self.assertEqual((selection.shape, selection.dtype),
                                 (args["q"].shape[:2] + (case[6],), torch.int32))
                self.check_selection(args, selection)
                self.check_outputs(args, out, lse, selection)

    def test_softmax_scale_and_determinism(self):
        args = make_case(CASES["bf16_causal"], self.gen)
        out, lse, selection = run(args, softmax_scale=0.3, deterministic=True)
        self.check_outputs(args, out, lse, selection, softmax_scale=0.3)
        again = run(args, softmax_scale=0.3, deterministic=True)
        self.assertTrue(same_up_to_rounding(out, again[0]) and same_up_to_rounding(lse, again[1]))

    def test_result_forms(self):
        args = make_case(CASES["bf16_causal"], self.gen)
        out = mt.moba_attn_varlen(**args)
        self.assertIsInstance(out, torch.Tensor)
        pair = mt.moba_attn_varlen(**args, return_lse=True)
        self.assertEqual(len(pair), 2)
        self.assertTrue(same_up_to_rounding(out, pair[0]))
        pair = mt.moba_attn_varlen(**args, return_selection=True)
        self.assertEqual(pair[1].dtype, torch.int32)

    def test_empty_batch(self):
        for hq, hkv, d in ((4, 4, 128), (8, 2, 64)):
            z = dict(q=torch.empty(0, hq, d, dtype=torch.bfloat16, device="cuda"),
                     k=torch.empty(0, hkv, d, dtype=torch.bfloat16, device="cuda"),
                     v=torch.empty(0, hkv, d, dtype=torch.bfloat16, device="cuda"),
                     max_seqlen_q=0, max_seqlen_k=0, block_size=64, top_k=4)
            for cu in ([0], [0, 0, 0]):
                cu = torch.tensor(cu, dtype=torch.int32, device="cuda")
                out, lse, sel = mt.moba_attn_varlen(cu_seqlens_q=cu, cu_seqlens_k=cu, return_lse=True,
                                                    return_selection=True, **z)
                self.assertEqual((out.shape, lse.shape, sel.shape), ((0, hq, d), (0, hq), (0, hq, 4)))

    def test_empty_keys(self):
        for causal in (True, False):
            q = torch.randn(5, 4, 64, device="cuda", dtype=torch.bfloat16)
            k = torch.empty(0, 2, 64, device="cuda", dtype=torch.bfloat16)
            poison(q.numel() * 2)
            out, lse = mt.moba_attn_varlen(q, k, k, cu_seqlens([5]), cu_seqlens([0]), 5, 0, 32, 2,
                                           causal=causal, return_lse=True)
            self.assertTrue(bool((out == 0).all()))
            self.assertTrue(bool((lse == -math.inf).all()))

    def test_strided_inputs(self):
        args = make_case(CASES["fp16_gqa_kconv_varlen"], self.gen)
        q, k, v = args["q"], args["k"], args["v"]
        fused = torch.zeros(q.shape[0], 3, *q.shape[1:], dtype=q.dtype, device="cuda")
        fused[:, 1] = q
        padded_k = torch.zeros(k.shape[0], k.shape[1], k.shape[2] + 32, dtype=k.dtype, device="cuda")
        padded_k[..., :k.shape[2]] = k
        strided = dict(args, q=fused[:, 1], k=padded_k[..., :k.shape[2]])
        self.assertFalse(strided["q"].is_contiguous() or strided["k"].is_contiguous())
        with torch.no_grad():
            want = mt.moba_attn_varlen(**args)
            got = mt.moba_attn_varlen(**strided)
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
        bad = torch.zeros(v.shape[0], v.shape[1], v.shape[2] + 4, dtype=v.dtype, device="cuda")[..., :v.shape[2]]
        with self.assertRaises(ArgumentError) as cm:
            mt.moba_attn_varlen(**dict(args, v=bad))
        self.assertIn("v's head stride must be a multiple of 8 elements", str(cm.exception))
        with self.assertRaises(ArgumentError) as cm:
            mt.moba_attn_varlen(**dict(args, k=k.cpu()))
        self.assertIn("k is on cpu but q is on cuda", str(cm.exception))

    def test_library_checks_reach_the_caller(self):
        args = make_case(CASES["bf16_causal"], self.gen)
        with self.assertRaises(ValueError) as cm:   # max_seqlen_q x batch < total_q
            mt.moba_attn_varlen(**dict(args, max_seqlen_q=10))
        self.assertIn("max_seqlen", str(cm.exception))
        self.assertIn("MOBAGEN_E_ARG", str(cm.exception))

    def test_padded_wrapper_and_module(self):
        b, sq, sk, hq, hkv, d = 2, 96, 160, 4, 2, 64
        q = torch.randn(b, sq, hq, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(b, sk, hkv, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(b, sk, hkv, d, device="cuda", dtype=torch.bfloat16)
        layer = mt.MobaAttention(d, hq, hkv, block_size=32, top_k=3, conv_width=3, device="cuda")
        with torch.no_grad():
            out, lse = mt.moba_attn_func(q, k, v, 32, 3, conv_weight=layer.conv_weight.to(q.dtype),
                                         return_lse=True)
            varlen, varlen_lse = mt.moba_attn_varlen(
                q.reshape(-1, hq, d), k.reshape(-1, hkv, d), v.reshape(-1, hkv, d),
                cu_seqlens([sq] * b), cu_seqlens([sk] * b), sq, sk, 32, 3,
                conv_weight=layer.conv_weight.to(q.dtype), return_lse=True)
            self.assertTrue(same_up_to_rounding(out.reshape(-1, hq, d), varlen))
            self.assertTrue(same_up_to_rounding(lse.transpose(1, 2).reshape(-1, hq), varlen_lse))
            self.assertTrue(same_up_to_rounding(layer(q, k, v), out))
        self.check_outputs(dict(q=q.reshape(-1, hq, d), k=k.reshape(-1, hkv, d), v=v.reshape(-1, hkv, d),
                                cu_seqlens_q=cu_seqlens([sq] * b), cu_seqlens_k=cu_seqlens([sk] * b),
                                block_size=32, top_k=3, causal=True,
                                conv_weight=layer.conv_weight.detach().to(q.dtype)),
                           varlen, varlen_lse, mt.moba_attn_varlen(
                               q.reshape(-1, hq, d), k.reshape(-1, hkv, d), v.reshape(-1, hkv, d),
                               cu_seqlens([sq] * b), cu_seqlens([sk] * b), sq, sk, 32, 3,
                               conv_weight=layer.conv_weight.detach().to(q.dtype), return_selection=True)[1])

    def test_ops_are_cached_per_spec(self):
        args = make_case(CASES["bf16_lq_ne_lk"], self.gen)
        mt.moba_attn_varlen(**args)
        rt = _runtime.runtime(torch.cuda.current_device())
        before = dict(rt.ops)
        mt.moba_attn_varlen(**args)
        mt.moba_attn_varlen(**dict(args, max_seqlen_q=args["max_seqlen_q"] + 1))
        self.assertEqual(rt.ops, before)
        self.assertIs(_runtime.runtime(torch.cuda.current_device()), rt)


@support.needs_gpu
class Streams(unittest.TestCase):
    def test_runs_on_the_current_stream(self):
        gen = torch.Generator(device="cuda").manual_seed(SEED)
        args = make_case(CASES["bf16_causal"], gen)
        want = mt.moba_attn_varlen(**args)
        late_q = torch.zeros_like(args["q"])
        torch.cuda.synchronize()
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            # q's values arrive on `side` only after a long sleep: a forward launched anywhere
            # but on `side` would read the zeros.
            torch.cuda._sleep(200_000_000)
            late_q.copy_(args["q"])
            got = mt.moba_attn_varlen(**dict(args, q=late_q))
        side.synchronize()
        self.assertTrue(same_up_to_rounding(got, want))

    def test_threads_share_the_device(self):
        """Calls from several threads (each on its own stream) serialise on the device's ctx
        and give the single-threaded answers."""
        gen = torch.Generator(device="cuda").manual_seed(SEED)
        cases = [make_case(CASES[name], gen) for name in ("bf16_causal", "fp16_gqa_kconv_varlen",
                                                          "bf16_causal", "bf16_lq_ne_lk")]
        want = [mt.moba_attn_varlen(**a) for a in cases]
        torch.cuda.synchronize()
        got, errors = [None] * len(cases), []

        def work(i):
            try:
                stream = torch.cuda.Stream()
                with torch.cuda.stream(stream):
                    for _ in range(10):
                        got[i] = mt.moba_attn_varlen(**cases[i])
                stream.synchronize()
            except Exception as e:   # reported below, in the test's own thread
                errors.append(e)
        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        for g, w in zip(got, want):
            self.assertTrue(same_up_to_rounding(g, w))


@support.needs_gpu
class Compiled(unittest.TestCase):
    def test_compile_fullgraph_module(self):
        # Only exact operations around the op (views, a scale by 2, a residual add), so that the
        # compiled and the eager module see bit-identical q, k, v and route identically.
        class Block(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.attn = mt.MobaAttention(64, 4, 2, block_size=32, top_k=2, conv_width=3)

            def forward(self, x, kv):
                k, v = kv.unbind(2)
                return self.attn(x, k, v) * 2 + x

        block = Block().cuda()
        torch._dynamo.reset()
        compiled = torch.compile(block, fullgraph=True)
        with torch.no_grad():
            for s in (128, 200):
                x = torch.randn(2, s, 4, 64, device="cuda", dtype=torch.bfloat16)
                kv = torch.randn(2, s + 64, 2, 2, 64, device="cuda", dtype=torch.bfloat16)
                torch.testing.assert_close(compiled(x, kv), block(x, kv))

    def test_opcheck(self):
        gen = torch.Generator(device="cuda").manual_seed(SEED)
        a = make_case(CASES["fp16_gqa_kconv_varlen"], gen)
        for selection in (False, True):
            torch.library.opcheck(torch.ops.mobagen.moba_attn_varlen_fwd.default,
                                  (a["q"], a["k"], a["v"], a["cu_seqlens_q"], a["cu_seqlens_k"],
                                   a["conv_weight"], a["max_seqlen_q"], a["max_seqlen_k"],
                                   a["block_size"], a["top_k"], a["causal"], None, selection))


if __name__ == "__main__":
    unittest.main()
