"""Kernel specs built from a call's arguments (no YAML file): the fields of mobagen_spec_params,
checked by the same ranges as a YAML spec (specs/README.md) so that a bad value is reported
here, by argument name, before the library is touched."""
import collections

from .errors import ArgumentError

DTYPES = ("bfloat16", "float16")

# field: (low, high, multiple of)
RANGES = collections.OrderedDict([
    ("head_dim", (32, 256, 32)),
    ("block_size", (16, 512, 16)),
    ("top_k", (1, 64, 1)),
    ("conv_width", (0, 8, 1)),
    ("gqa_group", (1, 64, 1)),
])


def check_int(name, value, low, high, multiple=1, what=None):
    """value is an int (not a bool) in [low, high] and a multiple of `multiple`."""
    label = what or name
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentError("%s must be an int, got %s %r" % (label, type(value).__name__, value))
    if not low <= value <= high or value % multiple:
        rule = "%d..%d" % (low, high)
        if multiple > 1:
            rule = "a multiple of %d in %s" % (multiple, rule)
        raise ArgumentError("%s must be %s, got %d" % (label, rule, value))
    return value


class SpecParams(collections.namedtuple(
        "SpecParams", "head_dim block_size top_k causal conv_width dtype gqa_group")):
    """One forward kernel family. A namedtuple, so it is its own canonical, hashable cache key:
    two calls that need the same kernels build equal SpecParams whatever order or types their
    arguments came in (bools and ints are normalised)."""
    __slots__ = ()

    def __new__(cls, head_dim, block_size, top_k, causal=True, conv_width=0, dtype="bfloat16",
                gqa_group=1):
        for name, (low, high, multiple) in RANGES.items():
            check_int(name, locals()[name], low, high, multiple)
        if causal not in (True, False, 0, 1):
            raise ArgumentError("causal must be a bool, got %r" % (causal,))
        if dtype not in DTYPES:
            raise ArgumentError("dtype must be one of %s, got %r" % (", ".join(DTYPES), dtype))
        return super().__new__(cls, int(head_dim), int(block_size), int(top_k), bool(causal),
                               int(conv_width), str(dtype), int(gqa_group))

    @property
    def name(self):
        """The spec name, as in the library's default (plus what sets this family apart), so
        that log lines and cache entries of the Python binding read like the CLI's."""
        name = "moba_d%d_b%d_k%d" % (self.head_dim, self.block_size, self.top_k)
        if not self.causal:
            name += "_noncausal"
        if self.conv_width:
            name += "_kconv%d" % self.conv_width
        if self.gqa_group > 1:
            name += "_g%d" % self.gqa_group
        return name + ("_fp16" if self.dtype == "float16" else "_bf16")

    def to_c(self):
        """A ctypes mobagen_spec_params (no tuning restriction: every variant is built)."""
        from . import _capi
        p = _capi.SpecParams()
        p.name = self.name.encode()
        p.head_dim, p.block_size, p.top_k = self.head_dim, self.block_size, self.top_k
        p.causal, p.conv_width = int(self.causal), self.conv_width
        p.dtype = _capi.DTYPE_CODES[self.dtype]
        p.gqa_group = self.gqa_group
        p.tuning, p.n_tuning = None, 0
        return p
