"""The PyTorch binding without a GPU: validation with CPU tensors, the fake implementation on
meta tensors, the backward's refusal, the padded wrapper, the module, torch.compile tracing."""
import os
import unittest

import support
from support import torch

if torch is not None:
    import mobagen.torch as mt
    from mobagen import ArgumentError, MobagenError
    from mobagen.torch import _runtime
    from mobagen.validate import validate_varlen as mt_validate


def tensors(device="cpu", dtype=None, total_q=10, total_k=12, hq=4, hkv=2, d=64):
    dtype = dtype or torch.bfloat16
    q = torch.randn(total_q, hq, d, device=device).to(dtype)
    k = torch.randn(total_k, hkv, d, device=device).to(dtype)
    v = torch.randn(total_k, hkv, d, device=device).to(dtype)
    cu_q = torch.tensor([0, 4, total_q], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, 5, total_k], dtype=torch.int32, device=device)
    return q, k, v, cu_q, cu_k


@support.needs_torch
class CpuValidation(unittest.TestCase):
    def call(self, q, k, v, cu_q, cu_k, **kw):
        args = dict(max_seqlen_q=6, max_seqlen_k=7, block_size=16, top_k=2)
        args.update(kw)
        return mt.moba_attn_varlen(q, k, v, cu_q, cu_k, **args)

    def expect(self, message, *args, **kw):
        with self.assertRaises(ArgumentError) as cm:
            self.call(*args, **kw)
        self.assertIn(message, str(cm.exception))

    def test_describe(self):
        q = torch.zeros(4, 6, 64, dtype=torch.float16)[:, ::2]
        info = _runtime.describe(q)
        self.assertEqual((info.shape, info.stride, info.dtype, info.device),
                         ((4, 3, 64), (384, 128, 1), "float16", "cpu"))
        self.assertEqual(_runtime.describe(torch.zeros(0, 2, 64)).data_ptr, 0)

    def test_cpu_tensors_are_refused_by_name(self):
        self.expect("q must be on a CUDA device, got cpu", *tensors())

    def test_errors_come_before_the_device(self):
        q, k, v, cu_q, cu_k = tensors()
        self.expect("q must be 3-D [total_q, num_heads_q, head_dim], got shape (10, 256)",
                    q.reshape(10, 256), k, v, cu_q, cu_k)
        self.expect("k must have q's dtype bfloat16, got float16", q, k.half(), v, cu_q, cu_k)
        self.expect("cu_seqlens_q must be a 1-D int32 tensor of batch+1 entries, got shape (3,) dtype int64",
                    q, k, v, cu_q.long(), cu_k)
        self.expect("q's heads (4) must be a positive multiple of k's heads (3)",
                    q, torch.zeros(12, 3, 64, dtype=torch.bfloat16), torch.zeros(12, 3, 64, dtype=torch.bfloat16),
                    cu_q, cu_k)
        self.expect("conv_weight must have shape [num_heads_k=2, W, head_dim=64]", q, k, v, cu_q, cu_k,
                    conv_weight=torch.zeros(2, 64, 3, dtype=torch.bfloat16))
        self.expect("top_k must be 1..64, got 65", q, k, v, cu_q, cu_k, top_k=65)
        self.expect("softmax_scale must be a finite number > 0", q, k, v, cu_q, cu_k, softmax_scale=-1.0)

    def test_deterministic_is_a_bool(self):
        with self.assertRaises(ArgumentError):
            self.call(*tensors(), deterministic="yes")


@support.needs_torch
@support.needs_library
class Marshalling(unittest.TestCase):
    """What reaches mobagen_fwd_args: pointers, strides in elements (0 = packed for dims that
    are never stepped over), null pointers exactly for empty tensors."""

    def problem(self, q, k, v, cu_q, cu_k, w=None, scale=None):
        on_gpu = lambda t: _runtime.describe(t)._replace(device="cuda:0")  # noqa: E731
        return mt_validate(on_gpu(q), on_gpu(k), on_gpu(v), on_gpu(cu_q), on_gpu(cu_k), 6, 7, 16, 2,
                           True, None if w is None else on_gpu(w), scale)

    def test_strided_and_packed(self):
        _, k, v, cu_q, cu_k = tensors(hkv=1)
        fused = torch.zeros(10, 3, 4, 64, dtype=torch.bfloat16)
        q = fused[:, 1]
        w = torch.zeros(1, 3, 64, dtype=torch.bfloat16)
        p = self.problem(q, k, v, cu_q, cu_k, w, 0.25)
        out, lse = torch.empty(10, 4, 64, dtype=torch.bfloat16), torch.empty(10, 4)
        a = _runtime._fwd_args(p, q, k, v, out, lse, cu_q, cu_k, w)
        self.assertEqual((a.batch, a.hq, a.hkv, a.head_dim, a.total_q, a.total_k), (2, 4, 1, 64, 10, 12))
        self.assertEqual((a.max_seqlen_q, a.max_seqlen_k, a.dtype), (6, 7, 0))
        self.assertEqual((a.q, a.k, a.v, a.out, a.lse), (q.data_ptr(), k.data_ptr(), v.data_ptr(),
                                                        out.data_ptr(), lse.data_ptr()))
        self.assertEqual((a.q_row_stride, a.q_head_stride), (3 * 4 * 64, 64))
        self.assertEqual((a.k_row_stride, a.k_head_stride), (64, 0))   # one kv head: packed
        self.assertEqual((a.out_row_stride, a.out_head_stride), (256, 64))
        self.assertEqual((a.cu_seqlens_q, a.cu_seqlens_k, a.conv_weight),
                         (cu_q.data_ptr(), cu_k.data_ptr(), w.data_ptr()))
        self.assertEqual(a.softmax_scale, 0.25)

    def test_empty_tensors_get_null_pointers(self):
        q, _, _, cu_q, _ = tensors()
        k = torch.empty(0, 2, 64, dtype=torch.bfloat16)
        cu_k = torch.zeros(3, dtype=torch.int32)
        p = self.problem(q, k, k, cu_q, cu_k)
        a = _runtime._fwd_args(p, q, k, k, torch.empty_like(q), torch.empty(10, 4), cu_q, cu_k, None)
        self.assertEqual((a.k, a.v, a.conv_weight, a.k_row_stride, a.k_head_stride), (0, 0, 0, 0, 0))
        self.assertAlmostEqual(a.softmax_scale, 0.125)

    def test_backward_arguments(self):
        q, k, v, cu_q, cu_k = tensors(hkv=1)
        w = torch.zeros(1, 3, 64, dtype=torch.bfloat16)
        p = self.problem(q, k, v, cu_q, cu_k, w)
        out, lse = torch.empty_like(q), torch.empty(10, 4)
        fused = torch.zeros(10, 2, 4, 64, dtype=torch.bfloat16)
        dout, dlse, sel = fused[:, 0], torch.zeros(10, 4), torch.zeros(10, 4, 2, dtype=torch.int32)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dw = torch.empty(1, 3, 64)
        fwd = _runtime._fwd_args(p, q, k, v, out, lse, cu_q, cu_k, w)
        a = _runtime._bwd_args(p, fwd, dout, dlse, sel, dq, dk, dv, dw, True)
        self.assertEqual((a.fwd.q, a.fwd.out, a.fwd.lse, a.fwd.conv_weight),
                         (q.data_ptr(), out.data_ptr(), lse.data_ptr(), w.data_ptr()))
        self.assertEqual((a.dout, a.dout_row_stride, a.dout_head_stride), (dout.data_ptr(), 2 * 4 * 64, 64))
        self.assertEqual((a.dlse, a.selection, a.dconv_weight, a.deterministic),
                         (dlse.data_ptr(), sel.data_ptr(), dw.data_ptr(), 1))
        self.assertEqual((a.dq, a.dk, a.dv), (dq.data_ptr(), dk.data_ptr(), dv.data_ptr()))
        self.assertEqual((a.dq_row_stride, a.dq_head_stride, a.dk_row_stride, a.dk_head_stride),
                         (256, 64, 64, 0))
        none = _runtime._bwd_args(p, fwd, dout, None, torch.empty(0, 4, 2, dtype=torch.int32), dq,
                                  torch.empty(0, 1, 64), torch.empty(0, 1, 64), None, False)
        self.assertEqual((none.dlse, none.selection, none.dk, none.dv, none.dconv_weight, none.deterministic),
                         (0, 0, 0, 0, 0, 0))

    def test_context_failure_is_reported_and_not_cached(self):
        saved = os.environ.get("MOBAGEN_LIBCUDA")
        os.environ["MOBAGEN_LIBCUDA"] = "/nonexistent/mobagen-pytest/libcuda.so.1"
        index = 4321   # never a real device: no cached context can answer for it
        try:
            for _ in range(2):
                with self.assertRaises(MobagenError) as cm:
                    _runtime.runtime(index)
                self.assertEqual(cm.exception.status_name, "MOBAGEN_E_NO_DRIVER")
                self.assertIn("mobagen_ctx_create(device 4321)", str(cm.exception))
                self.assertIn("/nonexistent/mobagen-pytest/libcuda.so.1", str(cm.exception))
                self.assertNotIn(index, _runtime._runtimes)
        finally:
            if saved is None:
                del os.environ["MOBAGEN_LIBCUDA"]
            else:
                os.environ["MOBAGEN_LIBCUDA"] = saved


def meta(**kw):
    return tuple(t.to("meta") for t in tensors(**kw))


class RecordingBackward:
    """Replaces the backward op that the autograd rule calls with a recorder that runs its fake
    implementation (the meta tensors' kernel), so that a test sees what reached it."""

    def __init__(self):
        self.calls = []

    def __call__(self, *args):
        names = ("dout", "q", "k", "v", "out", "lse", "dlse", "selection", "cu_seqlens_q",
                 "cu_seqlens_k", "conv_weight", "max_seqlen_q", "max_seqlen_k", "block_size",
                 "top_k", "causal", "softmax_scale", "deterministic")
        self.calls.append(dict(zip(names, args)))
        return self.real(*args)

    def __enter__(self):
        self.real = mt._ops.moba_attn_varlen_bwd
        mt._ops.moba_attn_varlen_bwd = self
        return self

    def __exit__(self, *exc):
        mt._ops.moba_attn_varlen_bwd = self.real


@support.needs_torch
class Autograd(unittest.TestCase):
    """The forward's autograd rule on meta tensors: what it saves, what it passes to the
    backward op, and the gradients' shapes and dtypes."""

    def test_gradients_of_every_input(self):
        q, k, v, cu_q, cu_k = meta()
        weight = torch.empty(2, 3, 64, device="meta", requires_grad=True)   # fp32, cast per call
        for t in (q, k, v):
            t.requires_grad_()
        with RecordingBackward() as rec:
            out = mt.moba_attn_varlen(q, k, v, cu_q, cu_k, 6, 7, 16, 2, conv_weight=weight.to(q.dtype),
                                      softmax_scale=0.3, deterministic=True)
            out.sum().backward()
        for t, like in ((q.grad, q), (k.grad, k), (v.grad, v)):
            self.assertEqual((t.shape, t.dtype), (like.shape, like.dtype))
        self.assertEqual((weight.grad.shape, weight.grad.dtype), ((2, 3, 64), torch.float32))
        (call,) = rec.calls
        self.assertIsNone(call["dlse"], "no dlse when the LSE is not used")
        self.assertEqual(tuple(call["selection"].shape), (10, 4, 2), "the forward's selection is kept")
        self.assertEqual((call["max_seqlen_q"], call["max_seqlen_k"], call["block_size"], call["top_k"],
                          call["causal"], call["softmax_scale"], call["deterministic"]),
                         (6, 7, 16, 2, True, 0.3, True))
        self.assertEqual(call["conv_weight"].dtype, torch.bfloat16)

    def test_lse_gradient_reaches_the_backward(self):
        q, k, v, cu_q, cu_k = meta()
        q.requires_grad_()
        with RecordingBackward() as rec:
            out, lse = mt.moba_attn_varlen(q, k, v, cu_q, cu_k, 6, 7, 16, 2, return_lse=True)
            (out.sum() + lse.sum()).backward()
            self.assertEqual(tuple(rec.calls[-1]["dlse"].shape), (10, 4))
            self.assertFalse(rec.calls[-1]["deterministic"])
            _, lse = mt.moba_attn_varlen(q, k, v, cu_q, cu_k, 6, 7, 16, 2, return_lse=True)
            lse.sum().backward()   # o unused: its gradient is zeros
            self.assertEqual(tuple(rec.calls[-1]["dout"].shape), (10, 4, 64))
        self.assertEqual(len(rec.calls), 2)
        self.assertIsNone(k.grad)

    def test_only_inputs_that_require_grad_get_one(self):
        q, k, v, cu_q, cu_k = meta()
        v.requires_grad_()
        mt.moba_attn_varlen(q, k, v, cu_q, cu_k, 6, 7, 16, 2).sum().backward()
        self.assertEqual(v.grad.shape, v.shape)
        self.assertIsNone(q.grad)
        with torch.no_grad():   # no graph, and the selection is not kept
            self.assertFalse(mt.moba_attn_varlen(q, k, v, cu_q, cu_k, 6, 7, 16, 2).requires_grad)

    def test_direct_op_without_selection_routes_again(self):
        q, k, v, cu_q, cu_k = meta()
        q.requires_grad_()
        with RecordingBackward() as rec:
            out, _, sel = torch.ops.mobagen.moba_attn_varlen_fwd(q, k, v, cu_q, cu_k, None, 6, 7, 16, 2,
                                                                 True, None, False)
            self.assertEqual(sel.shape[0], 0)
            out.sum().backward()
        self.assertIsNone(rec.calls[0]["selection"])
        self.assertFalse(rec.calls[0]["deterministic"])   # the op's default

    def test_padded_wrapper_and_module(self):
        q = torch.empty(2, 9, 4, 64, dtype=torch.bfloat16, device="meta", requires_grad=True)
        k = torch.empty(2, 11, 2, 64, dtype=torch.bfloat16, device="meta", requires_grad=True)
        out, lse = mt.moba_attn_func(q, k, k, 16, 2, return_lse=True)
        (out.sum() + lse.sum()).backward()
        self.assertEqual((q.grad.shape, k.grad.shape), ((2, 9, 4, 64), (2, 11, 2, 64)))
        layer = mt.MobaAttention(64, 4, 2, block_size=16, top_k=2, conv_width=3, device="meta",
                                 deterministic=True)
        with RecordingBackward() as rec:
            layer(q.detach(), k.detach(), k.detach()).sum().backward()
        self.assertEqual(layer.conv_weight.grad.shape, (2, 3, 64))
        self.assertTrue(rec.calls[0]["deterministic"])

    def test_empty_inputs(self):
        for total_q, total_k in ((0, 0), (10, 0), (0, 12)):
            q, k, v, _, _ = meta(total_q=total_q, total_k=total_k)
            cu = torch.zeros(3, dtype=torch.int32, device="meta")
            for t in (q, k, v):
                t.requires_grad_()
            mt.moba_attn_varlen(q, k, v, cu, cu, 6, 7, 16, 2).sum().backward()
            self.assertEqual((q.grad.shape, k.grad.shape), (q.shape, k.shape))


@support.needs_torch
class BackwardOp(unittest.TestCase):
    def args(self, **change):
        q, k, v, cu_q, cu_k = meta()
        a = dict(dout=torch.empty_like(q), q=q, k=k, v=v, out=torch.empty_like(q),
                 lse=torch.empty(10, 4, device="meta"), dlse=None,
                 selection=torch.empty(10, 4, 2, dtype=torch.int32, device="meta"),
                 cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, conv_weight=None, max_seqlen_q=6,
                 max_seqlen_k=7, block_size=16, top_k=2, causal=True, softmax_scale=None,
                 deterministic=False)
        a.update(change)
        return a

    def test_fake_shapes(self):
        dq, dk, dv, dw = mt.moba_attn_varlen_bwd(**self.args())
        self.assertEqual([t.shape for t in (dq, dk, dv, dw)], [(10, 4, 64), (12, 2, 64), (12, 2, 64), (0,)])
        self.assertEqual({t.dtype for t in (dq, dk, dv)}, {torch.bfloat16})
        w = torch.empty(2, 3, 64, dtype=torch.float16, device="meta")
        q, k, v, _, _ = meta(dtype=torch.float16)
        dq, dk, dv, dw = mt.moba_attn_varlen_bwd(**self.args(q=q, k=k, v=v, dout=torch.empty_like(q),
                                                            out=torch.empty_like(q), conv_weight=w))
        self.assertEqual((dq.dtype, dw.shape, dw.dtype), (torch.float16, (2, 3, 64), torch.float32))
        self.assertTrue(all(t.is_contiguous() for t in (dq, dk, dv, dw)))

    def test_fake_checks_rank_and_dtype(self):
        q = self.args()["q"]
        for change, message in ((dict(dout=q.half()), "dout must be torch.bfloat16, got torch.float16"),
                                (dict(lse=torch.empty(10, 4, device="meta", dtype=torch.bfloat16)),
                                 "lse must be torch.float32"),
                                (dict(dlse=torch.empty(10, device="meta")), "dlse must be 2-D"),
                                (dict(selection=torch.empty(10, 4, 2, device="meta", dtype=torch.int64)),
                                 "selection must be torch.int32"),
                                (dict(q=q.float()), "q must be bfloat16 or float16")):
            with self.assertRaises(ArgumentError) as cm:
                mt.moba_attn_varlen_bwd(**self.args(**change))
            self.assertIn(message, str(cm.exception))

    def test_cpu_tensors_are_refused_by_name(self):
        q, k, v, cu_q, cu_k = tensors()
        args = dict(self.args(), q=q, k=k, v=v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, dout=torch.zeros_like(q),
                    out=torch.zeros_like(q), lse=torch.zeros(10, 4), selection=None)
        with self.assertRaises(ArgumentError) as cm:
            mt.moba_attn_varlen_bwd(**args)
        self.assertIn("q must be on a CUDA device, got cpu", str(cm.exception))

    def test_opcheck_on_meta(self):
        q, k, v, cu_q, cu_k = meta()
        for t in (q, k, v):
            t.requires_grad_()
        for selection in (False, True):
            torch.library.opcheck(torch.ops.mobagen.moba_attn_varlen_fwd.default,
                                  (q, k, v, cu_q, cu_k, None, 6, 7, 16, 2, True, None, selection, True))
        a = self.args(dlse=torch.empty(10, 4, device="meta"),
                      conv_weight=torch.empty(2, 3, 64, dtype=torch.bfloat16, device="meta"))
        torch.library.opcheck(torch.ops.mobagen.moba_attn_varlen_bwd.default, tuple(a.values()))


@support.needs_torch
class Fake(unittest.TestCase):
    def test_shapes_and_dtypes(self):
        for dtype in (torch.bfloat16, torch.float16):
            q, k, v, cu_q, cu_k = (t.to("meta") for t in tensors(dtype=dtype))
            out, lse, sel = mt.moba_attn_varlen(q, k, v, cu_q, cu_k, 6, 7, 16, 3, return_lse=True,
                                                return_selection=True)
            self.assertEqual((out.shape, out.dtype), ((10, 4, 64), dtype))
            self.assertEqual((lse.shape, lse.dtype), ((10, 4), torch.float32))
            self.assertEqual((sel.shape, sel.dtype), ((10, 4, 3), torch.int32))
            self.assertTrue(out.is_contiguous())
        out = mt.moba_attn_varlen(q, k, v, cu_q, cu_k, 6, 7, 16, 3)
        self.assertIsInstance(out, torch.Tensor)
        out, lse = mt.moba_attn_varlen(q, k, v, cu_q, cu_k, 6, 7, 16, 3, return_lse=True)
        self.assertEqual(lse.shape, (10, 4))

    def test_fake_checks_rank_and_dtype(self):
        q, k, v, cu_q, cu_k = (t.to("meta") for t in tensors())
        with self.assertRaises(ArgumentError):
            mt.moba_attn_varlen(q.float(), k, v, cu_q, cu_k, 6, 7, 16, 3)
        with self.assertRaises(ArgumentError):
            mt.moba_attn_varlen(q, k, v, cu_q.long(), cu_k, 6, 7, 16, 3)
        with self.assertRaises(ArgumentError):
            mt.moba_attn_varlen(q[0], k, v, cu_q, cu_k, 6, 7, 16, 3)

    def test_padded_wrapper(self):
        q = torch.empty(2, 9, 4, 64, dtype=torch.bfloat16, device="meta")
        k = torch.empty(2, 11, 2, 64, dtype=torch.bfloat16, device="meta")
        out, lse, sel = mt.moba_attn_func(q, k, k, 16, 2, return_lse=True, return_selection=True)
        self.assertEqual((out.shape, lse.shape, sel.shape), ((2, 9, 4, 64), (2, 4, 9), (2, 9, 4, 2)))
        with self.assertRaises(ArgumentError) as cm:
            mt.moba_attn_func(q[0], k, k, 16, 2)
        self.assertIn("q must be 4-D [batch, seqlen, num_heads_q, head_dim], got (9, 4, 64)", str(cm.exception))
        with self.assertRaises(ArgumentError) as cm:
            mt.moba_attn_func(q, k[:1], k[:1], 16, 2)
        self.assertIn("k and v must have q's batch 2", str(cm.exception))
        empty = mt.moba_attn_func(q[:0], k[:0], k[:0], 16, 2)
        self.assertEqual(empty.shape, (0, 9, 4, 64))


@support.needs_torch
class Module(unittest.TestCase):
    def test_parameters(self):
        m = mt.MobaAttention(64, 8, 2, block_size=32, top_k=4, conv_width=3)
        self.assertEqual(tuple(m.conv_weight.shape), (2, 3, 64))
        self.assertTrue(0 < float(m.conv_weight.detach().std()) < 0.05)
        self.assertEqual([n for n, _ in m.named_parameters()], ["conv_weight"])
        self.assertIsNone(mt.MobaAttention(64, 8).conv_weight)
        self.assertIn("block_size=32", repr(m))

    def test_bad_configuration_fails_at_construction(self):
        for kw, message in ((dict(head_dim=64, num_heads=6, num_kv_heads=4), "num_heads (6)"),
                            (dict(head_dim=80, num_heads=4), "head_dim"),
                            (dict(head_dim=64, num_heads=4, block_size=100), "block_size"),
                            (dict(head_dim=64, num_heads=4, conv_width=9), "conv_width"),
                            (dict(head_dim=64, num_heads=4, softmax_scale=0.0), "softmax_scale")):
            with self.assertRaises(ArgumentError) as cm:
                mt.MobaAttention(**kw)
            self.assertIn(message, str(cm.exception))

    def test_forward_shapes_and_weight_cast(self):
        m = mt.MobaAttention(64, 4, 2, block_size=16, top_k=2, conv_width=3, device="meta")
        q = torch.empty(2, 9, 4, 64, dtype=torch.bfloat16, device="meta")
        k = torch.empty(2, 11, 2, 64, dtype=torch.bfloat16, device="meta")
        with torch.no_grad():
            self.assertEqual(m(q, k, k).shape, (2, 9, 4, 64))
            packed = m(q.reshape(18, 4, 64), k.reshape(22, 2, 64), k.reshape(22, 2, 64),
                       torch.zeros(3, dtype=torch.int32, device="meta"),
                       torch.zeros(3, dtype=torch.int32, device="meta"), 9, 11)
            self.assertEqual(packed.shape, (18, 4, 64))
            with self.assertRaises(ArgumentError):
                m(q.reshape(18, 4, 64), k.reshape(22, 2, 64), k.reshape(22, 2, 64),
                  torch.zeros(3, dtype=torch.int32, device="meta"))
        out = m(q, k, k)   # the weight requires grad: the graph reaches it
        self.assertTrue(out.requires_grad)
        with self.assertRaises(ArgumentError):
            mt.MobaAttention(64, 4, deterministic=1)


@support.needs_torch
class Compile(unittest.TestCase):
    """torch.compile(fullgraph=True) traces the wrapper and the module into one graph holding
    the custom op (the real run is in test_gpu)."""

    def test_one_graph_with_the_op(self):
        graphs = []

        def backend(gm, example_inputs):
            graphs.append(gm)
            return gm.forward

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.attn = mt.MobaAttention(64, 4, 2, block_size=16, top_k=2, conv_width=3)

            def forward(self, q, k, v):
                return self.attn(q, k, v) * 2

        torch._dynamo.reset()
        net = Net().to("meta")
        q = torch.empty(2, 9, 4, 64, dtype=torch.bfloat16, device="meta")
        k = torch.empty(2, 11, 2, 64, dtype=torch.bfloat16, device="meta")
        with torch.no_grad():
            out = torch.compile(net, fullgraph=True, backend=backend)(q, k, k)
        self.assertEqual(out.shape, (2, 9, 4, 64))
        self.assertEqual(len(graphs), 1)
        targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
        self.assertTrue(any("moba_attn_varlen_fwd" in t for t in targets), targets)


    def test_forward_and_backward_graphs_hold_the_ops(self):
        """fullgraph tracing of forward + backward: one forward graph with the forward op, one
        backward graph with the backward op (its dlse None: the LSE is not used)."""
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd
        graphs = {"fw": [], "bw": []}

        def keep(kind):
            def compiler(gm, example_inputs):
                graphs[kind].append(gm)
                return make_boxed_func(gm.forward)
            return compiler

        layer = mt.MobaAttention(64, 4, 2, block_size=16, top_k=2, conv_width=3, device="meta")
        torch._dynamo.reset()
        step = torch.compile(lambda q, k, v: (layer(q, k, v) * 2).sum(), fullgraph=True,
                             backend=aot_autograd(fw_compiler=keep("fw"), bw_compiler=keep("bw")))
        q = torch.empty(2, 9, 4, 64, dtype=torch.bfloat16, device="meta", requires_grad=True)
        k = torch.empty(2, 11, 2, 64, dtype=torch.bfloat16, device="meta", requires_grad=True)
        step(q, k, k).backward()
        self.assertEqual((q.grad.shape, k.grad.shape, layer.conv_weight.grad.shape),
                         ((2, 9, 4, 64), (2, 11, 2, 64), (2, 3, 64)))
        self.assertEqual((len(graphs["fw"]), len(graphs["bw"])), (1, 1))

        def calls(gm, name):
            return [n for n in gm.graph.nodes if n.op == "call_function" and name in str(n.target)]
        self.assertEqual(len(calls(graphs["fw"][0], "moba_attn_varlen_fwd")), 1)
        (bwd,) = calls(graphs["bw"][0], "moba_attn_varlen_bwd")
        self.assertIsNone(bwd.args[6])          # dlse
        self.assertIsNotNone(bwd.args[7])       # the forward's selection


if __name__ == "__main__":
    unittest.main()
