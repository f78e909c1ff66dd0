"""Spec parameters built from a call's arguments: ranges, canonical keys, names, C struct."""
import unittest

from mobagen import _capi
from mobagen.errors import ArgumentError
from mobagen.spec import SpecParams


class Ranges(unittest.TestCase):
    def test_valid_extremes(self):
        for args in ((32, 16, 1), (256, 512, 64)):
            SpecParams(*args)
        SpecParams(128, 128, 8, conv_width=8, gqa_group=64, dtype="float16", causal=False)

    def test_each_field_names_itself(self):
        cases = [
            (dict(head_dim=48), "head_dim must be a multiple of 32 in 32..256, got 48"),
            (dict(head_dim=288), "head_dim must be a multiple of 32 in 32..256, got 288"),
            (dict(block_size=8), "block_size must be a multiple of 16 in 16..512, got 8"),
            (dict(block_size=40), "block_size must be a multiple of 16 in 16..512, got 40"),
            (dict(top_k=0), "top_k must be 1..64, got 0"),
            (dict(top_k=65), "top_k must be 1..64, got 65"),
            (dict(conv_width=9), "conv_width must be 0..8, got 9"),
            (dict(gqa_group=0), "gqa_group must be 1..64, got 0"),
            (dict(top_k=2.0), "top_k must be an int, got float 2.0"),
            (dict(top_k=True), "top_k must be an int, got bool True"),
            (dict(dtype="float32"), "dtype must be one of bfloat16, float16, got 'float32'"),
            (dict(causal="yes"), "causal must be a bool, got 'yes'"),
        ]
        for change, message in cases:
            args = dict(head_dim=64, block_size=64, top_k=4)
            args.update(change)
            with self.assertRaises(ArgumentError, msg=str(change)) as cm:
                SpecParams(**args)
            self.assertEqual(str(cm.exception), message)


class CacheKey(unittest.TestCase):
    def test_equal_specs_share_a_key(self):
        a = SpecParams(128, 128, 8, 1, 0, "bfloat16", 1)
        b = SpecParams(head_dim=128, block_size=128, top_k=8, causal=True)
        self.assertEqual(a, b)
        self.assertEqual(hash(a), hash(b))
        self.assertIs(a.causal, True)
        cache = {a: "op"}
        self.assertEqual(cache[b], "op")

    def test_every_field_is_in_the_key(self):
        base = SpecParams(128, 128, 8)
        variants = [base._replace(**{f: v}) for f, v in (
            ("head_dim", 64), ("block_size", 64), ("top_k", 4), ("causal", False),
            ("conv_width", 3), ("dtype", "float16"), ("gqa_group", 2))]
        self.assertEqual(len({base, *variants}), 1 + len(variants))

    def test_names_tell_specs_apart(self):
        names = {SpecParams(128, 128, 8).name, SpecParams(128, 128, 8, causal=False).name,
                 SpecParams(128, 128, 8, conv_width=3).name, SpecParams(128, 128, 8, gqa_group=4).name,
                 SpecParams(128, 128, 8, dtype="float16").name}
        self.assertEqual(len(names), 5)
        self.assertEqual(SpecParams(128, 128, 8).name, "moba_d128_b128_k8_bf16")
        for name in names:
            self.assertRegex(name, r"^[A-Za-z0-9_-]{1,63}$")


class CStruct(unittest.TestCase):
    def test_fields(self):
        p = SpecParams(96, 48, 5, causal=False, conv_width=4, dtype="float16", gqa_group=3).to_c()
        self.assertEqual((p.head_dim, p.block_size, p.top_k, p.causal, p.conv_width, p.dtype,
                          p.gqa_group, p.n_tuning), (96, 48, 5, 0, 4, _capi.DTYPE_FP16, 3, 0))
        self.assertFalse(p.tuning)
        self.assertEqual(p.name, b"moba_d96_b48_k5_noncausal_kconv4_g3_fp16")
        self.assertEqual(SpecParams(32, 16, 1).to_c().dtype, _capi.DTYPE_BF16)
        self.assertEqual(SpecParams(32, 16, 1).to_c().causal, 1)


if __name__ == "__main__":
    unittest.main()
