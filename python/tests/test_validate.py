"""The pure-Python argument checks over tensor descriptors (no torch needed)."""
import math
import unittest

from mobagen import ArgumentError, SpecParams, TensorInfo, validate_varlen
from mobagen.validate import validate_backward


def packed(shape, dtype="bfloat16", device="cuda:0", ptr=0x7f0000000000):
    stride, acc = [], 1
    for n in reversed(shape):
        stride.insert(0, acc)
        acc *= n
    return TensorInfo(tuple(shape), tuple(stride), dtype, device, ptr if acc else 0)


def good(**change):
    args = dict(q=packed((100, 8, 128)), k=packed((120, 2, 128)), v=packed((120, 2, 128)),
                cu_seqlens_q=packed((3,), "int32"), cu_seqlens_k=packed((3,), "int32"),
                max_seqlen_q=60, max_seqlen_k=70, block_size=64, top_k=4)
    args.update(change)
    return args


class Valid(unittest.TestCase):
    def test_problem(self):
        p = validate_varlen(**good())
        self.assertEqual(p.spec, SpecParams(128, 64, 4, True, 0, "bfloat16", 4))
        self.assertEqual((p.batch, p.hq, p.hkv, p.head_dim, p.total_q, p.total_k), (2, 8, 2, 128, 100, 120))
        self.assertEqual((p.max_seqlen_q, p.max_seqlen_k, p.device), (60, 70, "cuda:0"))
        self.assertAlmostEqual(p.softmax_scale, 1 / math.sqrt(128))

    def test_options_enter_the_spec(self):
        p = validate_varlen(**good(causal=False, conv_weight=packed((2, 3, 128), "float16"), softmax_scale=0.5,
                                   q=packed((100, 8, 128), "float16"), k=packed((120, 2, 128), "float16"),
                                   v=packed((120, 2, 128), "float16")))
        self.assertEqual(p.spec, SpecParams(128, 64, 4, False, 0, "float16", 4)._replace(conv_width=3))
        self.assertEqual(p.softmax_scale, 0.5)
        with self.assertRaises(ArgumentError):   # conv_weight of the other dtype
            validate_varlen(**good(conv_weight=packed((2, 3, 128), "float16")))

    def test_empty_batch_and_empty_keys(self):
        p = validate_varlen(**good(q=packed((0, 8, 128)), k=packed((0, 2, 128)), v=packed((0, 2, 128)),
                                   cu_seqlens_q=packed((1,), "int32"), cu_seqlens_k=packed((1,), "int32"),
                                   max_seqlen_q=0, max_seqlen_k=0))
        self.assertEqual((p.batch, p.total_q, p.total_k), (0, 0, 0))
        p = validate_varlen(**good(k=packed((0, 2, 128)), v=packed((0, 2, 128)), max_seqlen_k=0))
        self.assertEqual((p.batch, p.total_q, p.total_k), (2, 100, 0))

    def test_padded_strides_are_fine(self):
        # q sliced out of a fused [total, 3, heads, d] projection: row stride 3 * 8 * 128.
        q = TensorInfo((100, 8, 128), (3 * 8 * 128, 128, 1), "bfloat16", "cuda:0", 0x7f0000000000)
        self.assertEqual(validate_varlen(**good(q=q)).total_q, 100)
        # Heads of size 1 and single rows may carry any stride: they are never stepped over.
        k = TensorInfo((1, 1, 128), (5, 3, 1), "bfloat16", "cuda:0", 0x7f0000000000)
        self.assertEqual(validate_varlen(**good(k=k, v=k, max_seqlen_k=1, q=packed((100, 4, 128)))).hkv, 1)


class Errors(unittest.TestCase):
    def expect(self, message, **change):
        with self.assertRaises(ArgumentError) as cm:
            validate_varlen(**good(**change))
        self.assertIn(message, str(cm.exception))

    def test_shapes(self):
        self.expect("q must be 3-D [total_q, num_heads_q, head_dim], got shape (100, 1024)",
                    q=packed((100, 1024)))
        self.expect("k must be 3-D [total_k, num_heads_k, head_dim], got shape (2, 120, 2, 128)",
                    k=packed((2, 120, 2, 128)))
        self.expect("head_dim (q.shape[2]) must be a multiple of 32 in 32..256, got 80",
                    q=packed((100, 8, 80)))
        self.expect("k must have shape [total_k, num_heads_k, 128] (q's head_dim), got (120, 2, 64)",
                    k=packed((120, 2, 64)))
        self.expect("v must have k's shape (120, 2, 128), got (121, 2, 128)", v=packed((121, 2, 128)))
        self.expect("q's heads (8) must be a positive multiple of k's heads (3)",
                    k=packed((120, 3, 128)), v=packed((120, 3, 128)))
        self.expect("q's heads / k's heads (65 / 1) must be at most 64", q=packed((100, 65, 128)),
                    k=packed((120, 1, 128)), v=packed((120, 1, 128)))

    def test_dtypes(self):
        self.expect("q must be bfloat16 or float16, got float32", q=packed((100, 8, 128), "float32"))
        self.expect("k must have q's dtype bfloat16, got float16", k=packed((120, 2, 128), "float16"))
        self.expect("v must have q's dtype bfloat16, got float32", v=packed((120, 2, 128), "float32"))

    def test_cu_seqlens(self):
        self.expect("cu_seqlens_q must be a 1-D int32 tensor of batch+1 entries, got shape (3,) dtype int64",
                    cu_seqlens_q=packed((3,), "int64"))
        self.expect("cu_seqlens_k must be a 1-D int32 tensor of batch+1 entries, got shape (3, 1) dtype int32",
                    cu_seqlens_k=packed((3, 1), "int32"))
        self.expect("cu_seqlens_q must be a 1-D int32 tensor of batch+1 entries, got shape (0,)",
                    cu_seqlens_q=packed((0,), "int32"))
        self.expect("cu_seqlens_k must have batch+1 = 3 entries like cu_seqlens_q, got 4",
                    cu_seqlens_k=packed((4,), "int32"))
        self.expect("cu_seqlens_q must be contiguous, got stride (2,)",
                    cu_seqlens_q=TensorInfo((3,), (2,), "int32", "cuda:0", 0x7f0000000000))
        self.expect("cu_seqlens_k is on cpu but q is on cuda:0", cu_seqlens_k=packed((3,), "int32", "cpu"))

    def test_conv_weight(self):
        self.expect("conv_weight must have shape [num_heads_k=2, W, head_dim=128] with 1 <= W <= 8, got (8, 3, 128)",
                    conv_weight=packed((8, 3, 128)))
        self.expect("got (2, 9, 128)", conv_weight=packed((2, 9, 128)))
        self.expect("got (2, 0, 128)", conv_weight=packed((2, 0, 128)))
        self.expect("got (2, 128)", conv_weight=packed((2, 128)))
        self.expect("conv_weight must have q's dtype bfloat16, got float32", conv_weight=packed((2, 3, 128), "float32"))
        self.expect("conv_weight must be contiguous, got strides (1, 2, 6) for shape (2, 3, 128)",
                    conv_weight=TensorInfo((2, 3, 128), (1, 2, 6), "bfloat16", "cuda:0", 0x7f0000000000))

    def test_scalars(self):
        self.expect("block_size must be a multiple of 16 in 16..512, got 100", block_size=100)
        self.expect("top_k must be 1..64, got 0", top_k=0)
        self.expect("max_seqlen_q must be 0..2147483647, got -1", max_seqlen_q=-1)
        self.expect("max_seqlen_k must be an int, got float 70.0", max_seqlen_k=70.0)
        for bad in (0.0, -1.0, math.inf, math.nan, "0.1", True):
            self.expect("softmax_scale must be a finite number > 0 (or None for 1/sqrt(head_dim)), got",
                        softmax_scale=bad)

    def test_devices(self):
        self.expect("q must be on a CUDA device, got cpu", q=packed((100, 8, 128), device="cpu"),
                    k=packed((120, 2, 128), device="cpu"), v=packed((120, 2, 128), device="cpu"),
                    cu_seqlens_q=packed((3,), "int32", "cpu"), cu_seqlens_k=packed((3,), "int32", "cpu"))
        self.expect("k is on cuda:1 but q is on cuda:0", k=packed((120, 2, 128), device="cuda:1"))
        self.expect("conv_weight is on cpu but q is on cuda:0", conv_weight=packed((2, 3, 128), device="cpu"))

    def test_layout(self):
        self.expect("q must be contiguous in its last dim (stride 1), got strides (1024, 1, 8)",
                    q=TensorInfo((100, 8, 128), (1024, 1, 8), "bfloat16", "cuda:0", 0x7f0000000000))
        self.expect("k's row stride must be a multiple of 8 elements and >= head_dim 128, got 260",
                    k=TensorInfo((120, 2, 128), (260, 128, 1), "bfloat16", "cuda:0", 0x7f0000000000))
        self.expect("v's head stride must be a multiple of 8 elements and >= head_dim 128, got 64",
                    v=TensorInfo((120, 2, 128), (256, 64, 1), "bfloat16", "cuda:0", 0x7f0000000000))
        self.expect("q's data must be 16-byte aligned, got address 0x7f0000000002",
                    q=packed((100, 8, 128), ptr=0x7f0000000002))



class Backward(unittest.TestCase):
    """validate_backward: the backward's other tensors against the forward's Problem. Wrong
    shapes, dtypes and devices are errors; layouts the library cannot read are copies."""

    def setUp(self):
        self.p = validate_varlen(**good())   # total_q 100, hq 8, d 128, top_k 4, bf16

    def tensors(self, **change):
        t = dict(out=packed((100, 8, 128)), lse=packed((100, 8), "float32"),
                 dout=packed((100, 8, 128)), dlse=packed((100, 8), "float32"),
                 selection=packed((100, 8, 4), "int32"))
        t.update(change)
        return t

    def expect(self, message, **change):
        with self.assertRaises(ArgumentError) as cm:
            validate_backward(self.p, **self.tensors(**change))
        self.assertIn(message, str(cm.exception))

    def test_packed_tensors_are_used_as_they_are(self):
        self.assertEqual(validate_backward(self.p, **self.tensors()), [])
        self.assertEqual(validate_backward(self.p, **self.tensors(dlse=None, selection=None)), [])
        # A selection with no rows is "none" (the forward was not asked for it): not checked.
        self.assertEqual(validate_backward(self.p, **self.tensors(selection=packed((0, 8, 4), "int32"))), [])

    def test_layouts_the_library_cannot_read_become_copies(self):
        expanded = TensorInfo((100, 8, 128), (0, 0, 0), "bfloat16", "cuda:0", 0x7f0000000000)   # ones.expand
        transposed = TensorInfo((100, 8, 128), (1, 100, 800), "bfloat16", "cuda:0", 0x7f0000000000)
        odd = TensorInfo((100, 8, 128), (8 * 128, 128, 1), "bfloat16", "cuda:0", 0x7f0000000002)
        lse_t = TensorInfo((100, 8), (1, 100), "float32", "cuda:0", 0x7f0000000000)
        sel_strided = TensorInfo((100, 8, 4), (64, 8, 1), "int32", "cuda:0", 0x7f0000000000)
        self.assertEqual(validate_backward(self.p, **self.tensors(dout=expanded)), ["dout"])
        self.assertEqual(validate_backward(self.p, **self.tensors(out=odd, dout=transposed)), ["out", "dout"])
        self.assertEqual(validate_backward(self.p, **self.tensors(lse=lse_t, dlse=lse_t, selection=sel_strided)),
                         ["lse", "dlse", "selection"])
        # Padded rows (a fused projection) are read in place, as in the forward.
        fused = TensorInfo((100, 8, 128), (3 * 8 * 128, 128, 1), "bfloat16", "cuda:0", 0x7f0000000000)
        self.assertEqual(validate_backward(self.p, **self.tensors(dout=fused)), [])

    def test_shapes(self):
        self.expect("dout must have shape [100, 8, 128] (from q and top_k), got (100, 8, 64)",
                    dout=packed((100, 8, 64)))
        self.expect("out must have shape [100, 8, 128]", out=packed((99, 8, 128)))
        self.expect("lse must have shape [100, 8]", lse=packed((100, 8, 1), "float32"))
        self.expect("dlse must have shape [100, 8]", dlse=packed((8, 100), "float32"))
        self.expect("selection must have shape [100, 8, 4]", selection=packed((100, 8, 5), "int32"))

    def test_dtypes(self):
        self.expect("dout must be bfloat16, got float16", dout=packed((100, 8, 128), "float16"))
        self.expect("out must be bfloat16, got float32", out=packed((100, 8, 128), "float32"))
        self.expect("lse must be float32, got bfloat16", lse=packed((100, 8)))
        self.expect("dlse must be float32, got float16", dlse=packed((100, 8), "float16"))
        self.expect("selection must be int32, got int64", selection=packed((100, 8, 4), "int64"))

    def test_devices(self):
        self.expect("dout is on cpu but q is on cuda:0", dout=packed((100, 8, 128), device="cpu"))
        self.expect("dlse is on cuda:1 but q is on cuda:0", dlse=packed((100, 8), "float32", "cuda:1"))


if __name__ == "__main__":
    unittest.main()
