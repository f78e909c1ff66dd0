"""Argument checks of the varlen forward, in plain Python over tensor descriptors, so that they
run (and are tested) without torch or a GPU. Each error names the argument and says what was
expected and what was given. The library checks again (and checks what needs the spec, such as
max_seqlen against total rows); these checks exist to fail early with PyTorch's vocabulary."""
import collections
import math

from .errors import ArgumentError
from .spec import RANGES, SpecParams, check_int

# What the checks need to know about a tensor. device: "cuda:0", "cpu", ...; dtype: "bfloat16",
# "int32", ... (torch's name without "torch."); data_ptr: an int (0 for no storage).
TensorInfo = collections.namedtuple("TensorInfo", "shape stride dtype device data_ptr")

# The problem one call describes, once its arguments are known to be consistent.
Problem = collections.namedtuple(
    "Problem", "spec batch hq hkv head_dim total_q total_k max_seqlen_q max_seqlen_k "
               "softmax_scale device")

ALIGN_BYTES = 16        # q, k, v and out rows are read and written with 16-byte vectors
STRIDE_MULTIPLE = 8     # elements: 16 bytes of a 2-byte dtype


def _shape(info):
    return tuple(int(s) for s in info.shape)


def _check_rank(name, info, layout):
    if len(info.shape) != 3:
        raise ArgumentError("%s must be 3-D %s, got shape %s" % (name, layout, _shape(info)))


def effective_strides(info):
    """(row, head) strides in elements as the library reads them. A dim of size <= 1 is never
    stepped over, and PyTorch may give it any stride, so it counts as packed."""
    rows, heads, head_dim = _shape(info)
    row = int(info.stride[0]) if rows > 1 else heads * head_dim
    head = int(info.stride[1]) if heads > 1 else head_dim
    return row, head


def layout_problem(name, info):
    """Why the library cannot read a [rows, heads, head_dim] tensor as it is laid out (a
    message), or None when it can."""
    shape = _shape(info)
    if shape[0] * shape[1] * shape[2] == 0:
        return None
    if int(info.stride[2]) != 1:
        return ("%s must be contiguous in its last dim (stride 1), got strides %s"
                % (name, tuple(info.stride)))
    row, head = effective_strides(info)
    for what, value in (("row", row), ("head", head)):
        if value % STRIDE_MULTIPLE or value < shape[2]:
            return ("%s's %s stride must be a multiple of %d elements and >= head_dim %d, got %d "
                    "(strides %s); .contiguous() gives a packed copy"
                    % (name, what, STRIDE_MULTIPLE, shape[2], value, tuple(info.stride)))
    if info.data_ptr % ALIGN_BYTES:
        return ("%s's data must be %d-byte aligned, got address 0x%x (a view at an odd "
                "offset?); .contiguous() gives an aligned copy" % (name, ALIGN_BYTES, info.data_ptr))
    return None


def _check_layout(name, info):
    problem = layout_problem(name, info)
    if problem:
        raise ArgumentError(problem)


def is_contiguous(info):
    """Row-major packed (dims of size <= 1 may have any stride), or empty."""
    shape = _shape(info)
    expected = 1
    for n, s in zip(reversed(shape), reversed(tuple(info.stride))):
        if n == 0:
            return True
        if n > 1 and int(s) != expected:
            return False
        expected *= n
    return True


def _check_cu_seqlens(name, info, entries=None):
    shape = _shape(info)
    if len(shape) != 1 or info.dtype != "int32" or shape[0] < 1:
        raise ArgumentError("%s must be a 1-D int32 tensor of batch+1 entries, got shape %s dtype %s"
                            % (name, shape, info.dtype))
    if entries is not None and shape[0] != entries:
        raise ArgumentError("%s must have batch+1 = %d entries like cu_seqlens_q, got %d"
                            % (name, entries, shape[0]))
    if shape[0] > 1 and int(info.stride[0]) != 1:
        raise ArgumentError("%s must be contiguous, got stride %s" % (name, tuple(info.stride)))
    return shape[0] - 1


def _check_device(name, info, device):
    if str(info.device) != str(device):
        raise ArgumentError("%s is on %s but q is on %s: every tensor must be on q's device"
                            % (name, info.device, device))


def validate_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, block_size,
                    top_k, causal=True, conv_weight=None, softmax_scale=None):
    """Checks one moba_attn_varlen call (TensorInfo for tensors, conv_weight may be None) and
    returns its Problem: the spec to build and the sizes to launch with."""
    _check_rank("q", q, "[total_q, num_heads_q, head_dim]")
    _check_rank("k", k, "[total_k, num_heads_k, head_dim]")
    _check_rank("v", v, "[total_k, num_heads_k, head_dim]")
    total_q, hq, head_dim = _shape(q)
    total_k, hkv, _ = _shape(k)
    low, high, multiple = RANGES["head_dim"]
    check_int("head_dim", head_dim, low, high, multiple, what="head_dim (q.shape[2])")
    if _shape(k)[2] != head_dim:
        raise ArgumentError("k must have shape [total_k, num_heads_k, %d] (q's head_dim), got %s"
                            % (head_dim, _shape(k)))
    if _shape(v) != _shape(k):
        raise ArgumentError("v must have k's shape %s, got %s" % (_shape(k), _shape(v)))
    if hkv < 1 or hq < 1 or hq % hkv:
        raise ArgumentError("q's heads (%d) must be a positive multiple of k's heads (%d)" % (hq, hkv))
    low, high, _ = RANGES["gqa_group"]
    if hq // hkv > high:
        raise ArgumentError("q's heads / k's heads (%d / %d) must be at most %d" % (hq, hkv, high))
    if q.dtype not in ("bfloat16", "float16"):
        raise ArgumentError("q must be bfloat16 or float16, got %s" % q.dtype)
    for name, info in (("k", k), ("v", v)):
        if info.dtype != q.dtype:
            raise ArgumentError("%s must have q's dtype %s, got %s" % (name, q.dtype, info.dtype))

    batch = _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q)
    _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, batch + 1)

    conv_width = 0
    if conv_weight is not None:
        shape = _shape(conv_weight)
        if len(shape) != 3 or shape[0] != hkv or shape[2] != head_dim or not 1 <= shape[1] <= RANGES["conv_width"][1]:
            raise ArgumentError("conv_weight must have shape [num_heads_k=%d, W, head_dim=%d] with "
                                "1 <= W <= %d, got %s" % (hkv, head_dim, RANGES["conv_width"][1], shape))
        if conv_weight.dtype != q.dtype:
            raise ArgumentError("conv_weight must have q's dtype %s, got %s" % (q.dtype, conv_weight.dtype))
        packed = (shape[1] * shape[2], shape[2], 1)
        if any(n > 1 and int(s) != p for n, s, p in zip(shape, conv_weight.stride, packed)):
            raise ArgumentError("conv_weight must be contiguous, got strides %s for shape %s"
                                % (tuple(conv_weight.stride), shape))
        conv_width = shape[1]

    for name, value in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        check_int(name, value, 0, 2 ** 31 - 1)
    if softmax_scale is not None:
        if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)) \
                or not math.isfinite(softmax_scale) or softmax_scale <= 0:
            raise ArgumentError("softmax_scale must be a finite number > 0 (or None for "
                                "1/sqrt(head_dim)), got %r" % (softmax_scale,))
    spec = SpecParams(head_dim, block_size, top_k, causal, conv_width, q.dtype, hq // hkv)

    device = q.device
    if not str(device).startswith("cuda"):
        raise ArgumentError("q must be on a CUDA device, got %s" % device)
    named = [("k", k), ("v", v), ("cu_seqlens_q", cu_seqlens_q),
             ("cu_seqlens_k", cu_seqlens_k)]
    if conv_weight is not None:
        named.append(("conv_weight", conv_weight))
    for name, info in named:
        _check_device(name, info, device)
    for name, info in (("q", q), ("k", k), ("v", v)):
        _check_layout(name, info)

    scale = 1.0 / math.sqrt(head_dim) if softmax_scale is None else float(softmax_scale)
    return Problem(spec, batch, hq, hkv, head_dim, total_q, total_k, max_seqlen_q, max_seqlen_k,
                   scale, str(device))


def validate_backward(problem, out, lse, dout, dlse=None, selection=None):
    """Checks the backward's other tensors (TensorInfo; dlse and selection may be None) against
    the forward's Problem: out and dout [total_q, hq, head_dim] of q's dtype, lse and dlse
    [total_q, hq] float32, selection [total_q, hq, top_k] int32 (or with no rows: none), all on
    q's device. Shapes, dtypes and devices are errors; layouts are not: returns the names of
    the tensors the library cannot read as they are laid out (a gradient may come expanded or
    transposed), which the binding then passes as contiguous copies."""
    p = problem
    rows = (p.total_q, p.hq, p.head_dim)
    wanted = [("out", out, rows, p.spec.dtype), ("dout", dout, rows, p.spec.dtype),
              ("lse", lse, rows[:2], "float32")]
    if dlse is not None:
        wanted.append(("dlse", dlse, rows[:2], "float32"))
    if selection is not None and _shape(selection)[:1] != (0,):
        wanted.append(("selection", selection, rows[:2] + (p.spec.top_k,), "int32"))
    copies = []
    for name, info, shape, dtype in wanted:
        if _shape(info) != shape:
            raise ArgumentError("%s must have shape %s (from q and top_k), got %s"
                                % (name, list(shape), _shape(info)))
        if info.dtype != dtype:
            raise ArgumentError("%s must be %s, got %s" % (name, dtype, info.dtype))
        _check_device(name, info, p.device)
        usable = layout_problem(name, info) is None if len(shape) == 3 and name != "selection" \
            else is_contiguous(info)
        if not usable:
            copies.append(name)
    return copies
