"""The backward through the PyTorch binding on a CUDA device: gradients of q, k, v and the key
convolution's weight (through o and through the LSE) against torch.autograd through
mobagen.reference in float64, on configurations covering block sizes 16..256, top_k 1..16, GQA
groups 1/2/4, key convolution 0/3, causal and not, varlen batches with empty sequences, L_q !=
L_k, bf16 and fp16; determinism; routing again without the saved selection; empty inputs;
torch.compile(fullgraph=True) of forward + backward against eager; a short training run against
the same model over mobagen.reference.

The reference runs on the GPU's own selection (as the forward tests do after checking routing):
a legitimate near-tie swap must not show up as a gradient error. Its inputs are the very
values the kernels get (the upstream gradients are drawn representable in the inputs' dtype),
so what remains is the kernels' own rounding: P and dS in the element type for the tensor-core
products, o rounded in D = rowsum(dO * o), and the outputs' final rounding."""
import copy
import math
import os
import random
import unittest

import support
from support import torch

if torch is not None:
    import mobagen.torch as mt
    from mobagen.reference import moba_attn_varlen_reference
    from test_gpu import cu_seqlens, make_case, poison

SEED = int(os.environ.get("MOBAGEN_TEST_SEED") or int.from_bytes(os.urandom(4), "little"))

# name: (seqlens_q, seqlens_k, hq, hkv, d, block_size, top_k, causal, conv_width, dtype).
# Fixed, so that their kernels can be built into a cache before the device run; the data are
# drawn from the seed. MOBAGEN_TEST_BWD_RANDOM=N adds N configurations drawn from the seed.
CASES = {
    "b16_k1_bf16_varlen_empty_seq": ([200, 0, 77], [200, 30, 77], 4, 4, 64, 16, 1, True, 0, "bfloat16"),
    "b32_k4_gqa2_kconv3_fp16": ([300, 129], [300, 129], 4, 2, 128, 32, 4, True, 3, "float16"),
    "b64_k8_gqa4_noncausal_lq_ne_lk_bf16": ([100, 250], [400, 60], 8, 2, 64, 64, 8, False, 0, "bfloat16"),
    "b128_k16_gqa4_kconv3_lq_lt_lk_bf16": ([130, 0], [1100, 50], 4, 1, 128, 128, 16, True, 3, "bfloat16"),
    "b256_k2_noncausal_empty_keys_fp16": ([64, 20], [700, 0], 2, 2, 64, 256, 2, False, 0, "float16"),
    "b16_k16_gqa2_kconv3_lq_gt_lk_fp16": ([300], [200], 4, 2, 32, 16, 16, True, 3, "float16"),
}
# Relative L2 error of a gradient, and its max abs error over the reference's max magnitude.
TOLERANCE = {"bfloat16": (2.5e-2, 6e-2), "float16": (6e-3, 2e-2)}
GRADS = ("dq", "dk", "dv", "dconv_weight")


def random_cases(count, rng):
    """Configurations drawn from rng over the issue's ranges, each with empty sequences mixed in."""
    cases = {}
    for i in range(count):
        block = rng.choice([16, 32, 64, 128, 256])
        top_k, group, width = rng.randint(1, 16), rng.choice([1, 2, 4]), rng.choice([0, 3])
        hkv = rng.choice([1, 2])
        batch = rng.randint(1, 3)
        lens_k = [rng.choice([0, rng.randint(1, 900)]) for _ in range(batch)]
        lens_q = [rng.choice([0, n, rng.randint(1, 300)]) for n in lens_k]
        cases["random%d" % i] = (lens_q, lens_k, hkv * group, hkv, rng.choice([32, 64, 128]), block,
                                 top_k, rng.random() < 0.7, width, rng.choice(["bfloat16", "float16"]))
    return cases


def upstream(out, lse, generator):
    """Random dL/do (representable in o's dtype) and dL/dLSE (zero where the LSE is -inf)."""
    dout = torch.randn(out.shape, device="cuda", generator=generator).to(out.dtype)
    dlse = torch.randn(lse.shape, device="cuda", generator=generator)
    return dout, torch.where(torch.isinf(lse), torch.zeros_like(dlse), dlse)


def loss_of(out, lse, dout, dlse):
    finite = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    return (out.double() * dout.double()).sum() + (finite.double() * dlse.double()).sum()


def leaves(args, dtype=None):
    """q, k, v, conv_weight as fresh leaves requiring grad (cast to dtype when given)."""
    out = {}
    for name in ("q", "k", "v", "conv_weight"):
        t = args[name]
        out[name] = None if t is None else t.detach().to(dtype or t.dtype).requires_grad_()
    return out


def gpu_gradients(args, dout_dlse=None, generator=None, deterministic=False, use_lse=True):
    """(grads dict, out, lse, selection, (dout, dlse)) of the binding's backward."""
    x = leaves(args)
    out, lse, selection = mt.moba_attn_varlen(**dict(args, **x), return_lse=True, return_selection=True,
                                              deterministic=deterministic)
    dout, dlse = dout_dlse or upstream(out, lse, generator)
    if not use_lse:
        dlse = torch.zeros_like(dlse)
    poison(out.numel() * out.element_size())
    loss_of(out, lse if use_lse else lse.detach(), dout, dlse).backward()
    grads = dict(zip(GRADS, (x["q"].grad, x["k"].grad, x["v"].grad,
                             None if x["conv_weight"] is None else x["conv_weight"].grad)))
    return grads, out, lse, selection, (dout, dlse)


def reference_gradients(args, selection, dout, dlse):
    x = leaves(args, torch.float64)
    ref = moba_attn_varlen_reference(
        x["q"], x["k"], x["v"], args["cu_seqlens_q"], args["cu_seqlens_k"], args["block_size"],
        args["top_k"], args["causal"], x["conv_weight"], selection=selection,
        kprime_dtype=args["q"].dtype)
    loss_of(ref.out, ref.lse, dout, dlse).backward()
    return dict(zip(GRADS, (x["q"].grad, x["k"].grad, x["v"].grad,
                            None if x["conv_weight"] is None else x["conv_weight"].grad)))


def bits(t):
    """The tensor's bit patterns (equal bits, not equal values: -0 and NaN count)."""
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()])


def errors(got, want):
    """(relative L2 error, max abs error / max |want|); (0, 0) for empty or all-zero pairs."""
    if want.numel() == 0:
        return 0.0, 0.0
    got, want = got.detach(), want.detach()
    err = got.double() - want
    scale = float(want.abs().max())
    if scale == 0:
        return float(err.abs().max()), float(err.abs().max())
    return float(err.norm() / want.norm()), float(err.abs().max()) / scale


@support.needs_gpu
class Gradients(unittest.TestCase):
    def setUp(self):
        self.gen = torch.Generator(device="cuda").manual_seed(SEED)

    def check(self, name, args, grads, want):
        rel_tol, max_tol = TOLERANCE[str(args["q"].dtype).replace("torch.", "")]
        report = []
        for g in GRADS:
            if want[g] is None:
                self.assertIsNone(grads[g], g)
                continue
            like = args["conv_weight" if g == "dconv_weight" else g[1:]]
            self.assertEqual((grads[g].shape, grads[g].dtype), (like.shape, like.dtype), g)
            self.assertFalse(bool(torch.isnan(grads[g]).any()), "%s: %s has NaN (unwritten?)" % (name, g))
            rel, worst = errors(grads[g], want[g])
            report.append("%s rel %.2e max %.2e" % (g, rel, worst))
            self.assertLess(rel, rel_tol, "%s: relative L2 error of %s (seed %d)" % (name, g, SEED))
            self.assertLess(worst, max_tol, "%s: max abs error of %s (seed %d)" % (name, g, SEED))
        print("  bwd %s: %s" % (name, ", ".join(report)))

    def test_cases_against_reference(self):
        cases = dict(CASES)
        cases.update(random_cases(int(os.environ.get("MOBAGEN_TEST_BWD_RANDOM") or 0), random.Random(SEED)))
        for name, case in cases.items():
            with self.subTest(case=name, seed=SEED):
                args = make_case(case, self.gen)
                grads, _, _, selection, (dout, dlse) = gpu_gradients(args, generator=self.gen)
                self.check(name, args, grads, reference_gradients(args, selection, dout, dlse))

    def test_without_lse_gradient(self):
        args = make_case(CASES["b32_k4_gqa2_kconv3_fp16"], self.gen)
        grads, _, _, selection, (dout, dlse) = gpu_gradients(args, generator=self.gen, use_lse=False)
        self.check("no_dlse", args, grads, reference_gradients(args, selection, dout, dlse))

    def test_deterministic_is_bitwise_and_matches(self):
        """Two backward passes over the same forward (its o and LSE: the forward itself agrees
        across runs only to rounding) give identical bits in deterministic mode, and agree with
        the default mode to rounding. Many queries of 4 heads per kv head reach each key: the
        reductions that atomics would reorder."""
        case = ([2048, 700], [2048, 700], 8, 2, 128, 64, 8, True, 3, "bfloat16")
        args = make_case(case, self.gen)
        runs = []
        for deterministic in (True, False):
            x = leaves(args)
            out, lse = mt.moba_attn_varlen(**dict(args, **x), return_lse=True, deterministic=deterministic)
            dout, dlse = upstream(out, lse, torch.Generator(device="cuda").manual_seed(SEED))
            loss = loss_of(out, lse, dout, dlse)
            inputs = [x["q"], x["k"], x["v"], x["conv_weight"]]
            runs.append([torch.autograd.grad(loss, inputs, retain_graph=True) for _ in range(2)])
        (first, again), (loose, _) = runs
        for name, a, b, c in zip(GRADS, first, again, loose):
            self.assertTrue(torch.equal(bits(a), bits(b)), "%s differs between two deterministic runs" % name)
            rel, _ = errors(c, a.double())
            self.assertLess(rel, 1e-2, "%s: deterministic and default modes differ beyond rounding" % name)

    def test_routing_again_without_the_selection(self):
        """The backward op without a selection (what a direct forward-op call with
        return_selection=False saves): the library routes again, k' included, and must find the
        blocks the forward used: the same bits as with the forward's selection."""
        args = make_case(CASES["b32_k4_gqa2_kconv3_fp16"], self.gen)
        with torch.no_grad():
            out, lse, selection = mt.moba_attn_varlen(**args, return_lse=True, return_selection=True)
        dout, dlse = upstream(out, lse, self.gen)
        given = (dout, args["q"], args["k"], args["v"], out, lse, dlse)
        rest = (args["cu_seqlens_q"], args["cu_seqlens_k"], args["conv_weight"], args["max_seqlen_q"],
                args["max_seqlen_k"], args["block_size"], args["top_k"], args["causal"], None, True)
        kept = torch.ops.mobagen.moba_attn_varlen_bwd(*given, selection, *rest)
        again = torch.ops.mobagen.moba_attn_varlen_bwd(*given, None, *rest)
        for name, a, b in zip(GRADS, kept, again):
            self.assertTrue(torch.equal(bits(a), bits(b)), "%s differs when routing runs again" % name)

    def test_grad_tensors_of_any_layout(self):
        """An expanded dL/do (out.sum()) is copied; q as a padded view of a fused tensor is read
        in place, and its gradient lands in that view only."""
        args = make_case(CASES["b16_k1_bf16_varlen_empty_seq"], self.gen)
        leaf = args["q"].detach().clone().requires_grad_()
        mt.moba_attn_varlen(**dict(args, q=leaf), deterministic=True).sum().backward()
        fused = torch.zeros(args["q"].shape[0], 2, *args["q"].shape[1:], dtype=args["q"].dtype, device="cuda")
        fused[:, 1] = args["q"]
        fused.requires_grad_()
        self.assertFalse(fused[:, 1].is_contiguous())
        mt.moba_attn_varlen(**dict(args, q=fused[:, 1]), deterministic=True).sum().backward()
        rel, _ = errors(fused.grad[:, 1], leaf.grad.double())
        self.assertLess(rel, 1e-2, "dq through a padded view differs")
        self.assertTrue(bool((fused.grad[:, 0] == 0).all()))

    def test_empty_inputs(self):
        w = (0.5 * torch.randn(2, 3, 64, device="cuda")).to(torch.bfloat16)
        for lens_q, lens_k in (([0, 0], [0, 0]), ([], []), ([5, 3], [0, 0]), ([0, 0], [40, 9])):
            q = torch.randn(sum(lens_q), 4, 64, device="cuda", dtype=torch.bfloat16)
            k = torch.randn(sum(lens_k), 2, 64, device="cuda", dtype=torch.bfloat16)
            v = torch.randn(sum(lens_k), 2, 64, device="cuda", dtype=torch.bfloat16)
            x = leaves(dict(q=q, k=k, v=v, conv_weight=w))
            poison(1 << 16)
            out, lse = mt.moba_attn_varlen(x["q"], x["k"], x["v"], cu_seqlens(lens_q), cu_seqlens(lens_k),
                                           max(lens_q, default=0), max(lens_k, default=0), 32, 2,
                                           conv_weight=x["conv_weight"], return_lse=True)
            loss_of(out, lse, torch.ones_like(out), torch.ones_like(lse)).backward()
            label = "seqlens_q %s, seqlens_k %s" % (lens_q, lens_k)
            for name, t in x.items():
                self.assertEqual(t.grad.shape, t.shape, label)
                self.assertTrue(bool((t.grad == 0).all()), "%s: d%s is not 0 (nothing depends on it)"
                                % (label, name))


@support.needs_gpu
class Compiled(unittest.TestCase):
    def test_compile_fullgraph_forward_backward(self):
        class Block(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.attn = mt.MobaAttention(64, 4, 2, block_size=32, top_k=3, conv_width=3,
                                             deterministic=True)

            def forward(self, x, kv):
                k, v = kv.unbind(2)
                return self.attn(x, k, v) * 2 + x

        torch.manual_seed(SEED)
        eager = Block().cuda()
        twin = copy.deepcopy(eager)
        torch._dynamo.reset()
        compiled = torch.compile(twin, fullgraph=True)
        for s in (128, 200):
            x = torch.randn(2, s, 4, 64, device="cuda", dtype=torch.bfloat16)
            kv = torch.randn(2, s + 64, 2, 2, 64, device="cuda", dtype=torch.bfloat16)
            g = torch.randn(2, s, 4, 64, device="cuda", dtype=torch.bfloat16)
            results = []
            for module, run in ((eager, eager), (twin, compiled)):
                xi, kvi = x.clone().requires_grad_(), kv.clone().requires_grad_()
                module.zero_grad()
                out = run(xi, kvi)
                (out.float() * g.float()).sum().backward()
                results.append((out, xi.grad, kvi.grad, module.attn.conv_weight.grad))
            for name, a, b in zip(("out", "dx", "dkv", "dconv_weight"), *results):
                self.assertIsNotNone(b, name)
                rel, _ = errors(b, a.double())
                self.assertLess(rel, 1e-2, "L %d: compiled %s differs from eager" % (s, name))


class TinyModel(torch.nn.Module if torch is not None else object):
    """Projections around one MoBA attention layer; attention() is swappable for the reference."""

    def __init__(self, dim=256, heads=4, kv_heads=2, head_dim=64, block=32, top_k=4):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim, self.block, self.top_k = heads, kv_heads, head_dim, block, top_k
        self.wq = torch.nn.Linear(dim, heads * head_dim, bias=False)
        self.wkv = torch.nn.Linear(dim, 2 * kv_heads * head_dim, bias=False)
        self.wo = torch.nn.Linear(heads * head_dim, dim, bias=False)
        self.attn = mt.MobaAttention(head_dim, heads, kv_heads, block_size=block, top_k=top_k, conv_width=3,
                                     conv_init_std=0.1)
        self.use_reference = False

    def forward(self, x):
        b, s, _ = x.shape
        q = self.wq(x).view(b, s, self.heads, self.head_dim).to(torch.bfloat16)
        k, v = self.wkv(x).view(b, s, 2, self.kv_heads, self.head_dim).to(torch.bfloat16).unbind(2)
        if self.use_reference:
            steps = torch.arange(b + 1, dtype=torch.int32, device=x.device) * s
            o = moba_attn_varlen_reference(
                q.reshape(b * s, self.heads, -1), k.reshape(b * s, self.kv_heads, -1),
                v.reshape(b * s, self.kv_heads, -1), steps, steps, self.block, self.top_k, True,
                self.attn.conv_weight.to(torch.bfloat16), dtype=torch.float32,
                kprime_dtype=torch.bfloat16).out.view(b, s, self.heads, self.head_dim)
        else:
            o = self.attn(q, k, v)
        return x + self.wo(o.float().reshape(b, s, -1))


@support.needs_gpu
class Training(unittest.TestCase):
    STEPS = 30
    # Per step: |loss - reference loss| <= REL * reference loss. The two differ by the kernels'
    # bf16 rounding of o and of the gradients (the reference works in fp32 on the same bf16
    # inputs), compounded over the steps: rounding the reference's o to bf16 alone moves its
    # curve by at most 0.03% (seen on CPU), so 1% leaves room for the gradients' rounding and
    # a rare near-tie routing swap, and still catches a wrong gradient.
    REL = 0.01

    def test_loss_curve_matches_reference(self):
        torch.manual_seed(1234)
        model = TinyModel().cuda()
        twin = copy.deepcopy(model)
        twin.use_reference = True
        x = torch.randn(2, 512, 256, device="cuda")
        target = torch.randn(2, 512, 256, device="cuda")
        curves = []
        for m in (model, twin):
            opt = torch.optim.Adam(m.parameters(), lr=3e-3)
            losses = []
            for _ in range(self.STEPS):
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(m(x), target)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            curves.append(losses)
        ours, ref = curves
        print("  training losses (mobagen / reference): " +
              " ".join("%.4f/%.4f" % pair for pair in list(zip(ours, ref))[::5]))
        self.assertLess(ours[-1], 0.9 * ours[0], "the loss did not go down")
        for step, (a, b) in enumerate(zip(ours, ref)):
            self.assertTrue(math.isfinite(a), "step %d: loss %r" % (step, a))
            self.assertLessEqual(abs(a - b), self.REL * b, "step %d: loss %.5f vs reference %.5f"
                                 % (step, a, b))
        self.assertIsNotNone(model.attn.conv_weight.grad)


if __name__ == "__main__":
    unittest.main()
