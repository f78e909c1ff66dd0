"""libmobagen contexts and ops for PyTorch tensors: one ctx per CUDA device and one op per spec,
created on first use and kept for the life of the process.

The C API allows one thread at a time on a ctx and its ops, so every call on a device's ctx
(op creation, workspace sizing, launch, selection lookup, error text) holds that device's lock.
The launch itself is asynchronous, so the lock is held for microseconds.

Nothing is destroyed at exit: the driver releases the contexts' modules with the process, and
destroying them from an atexit hook could run after PyTorch has torn its CUDA state down."""
import ctypes
import threading

import torch

from .. import _capi
from ..errors import ArgumentError
from ..validate import TensorInfo, validate_backward, validate_varlen


class DeviceRuntime:
    """libmobagen on one CUDA device: its ctx, its ops by SpecParams, and the lock over them."""

    def __init__(self, lib, index):
        self.lib = lib
        self.index = index
        self.lock = threading.Lock()
        self.ops = {}
        handle = ctypes.c_void_p()
        status = lib.ctx_create(index, None, ctypes.byref(handle))
        self.ctx = handle
        if status != _capi.OK:
            message = lib.ctx_errmsg(handle)
            if handle:
                lib.ctx_destroy(handle)
            self.ctx = None
            lib.check(status, lambda: message, "mobagen_ctx_create(device %d)" % index)

    def op(self, spec):
        """The op of `spec` (a SpecParams), built or loaded from the kernel cache on first use.
        Call with self.lock held."""
        op = self.ops.get(spec)
        if op is None:
            params = spec.to_c()
            handle = ctypes.c_void_p()
            status = self.lib.op_create_from_params(self.ctx, ctypes.byref(params), ctypes.byref(handle))
            self.lib.check(status, lambda: self.lib.ctx_errmsg(self.ctx),
                           "building the kernels of spec %s on cuda:%d" % (spec.name, self.index))
            op = self.ops[spec] = handle
        return op


_runtimes = {}
_runtimes_lock = threading.Lock()


def runtime(index):
    """The DeviceRuntime of CUDA device `index` (created once per process)."""
    with _runtimes_lock:
        rt = _runtimes.get(index)
        if rt is None:
            rt = _runtimes[index] = DeviceRuntime(_capi.library(), index)
        return rt


_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32",
                torch.int32: "int32", torch.int64: "int64"}


def describe(t):
    """TensorInfo of a tensor (what the pure-Python validator reads)."""
    dtype = _DTYPE_NAMES.get(t.dtype, str(t.dtype).replace("torch.", ""))
    return TensorInfo(tuple(t.shape), tuple(t.stride()), dtype, str(t.device),
                      t.data_ptr() if t.numel() else 0)


def check_args(q, k, v, cu_seqlens_q, cu_seqlens_k, conv_weight, max_seqlen_q, max_seqlen_k,
               block_size, top_k, causal, softmax_scale):
    """validate_varlen on tensors: the Problem, or an ArgumentError naming the bad argument."""
    for name, t in (("q", q), ("k", k), ("v", v), ("cu_seqlens_q", cu_seqlens_q),
                    ("cu_seqlens_k", cu_seqlens_k), ("conv_weight", conv_weight)):
        if not isinstance(t, torch.Tensor) and not (name == "conv_weight" and t is None):
            raise ArgumentError("%s must be a torch.Tensor, got %s" % (name, type(t).__name__))
    return validate_varlen(describe(q), describe(k), describe(v), describe(cu_seqlens_q),
                           describe(cu_seqlens_k), max_seqlen_q, max_seqlen_k, block_size, top_k,
                           causal, None if conv_weight is None else describe(conv_weight),
                           softmax_scale)


def _ptr(t):
    """The device address of a tensor, 0 for None or an empty one (the C API's "none")."""
    return t.data_ptr() if t is not None and t.numel() else 0


def _set_rows(args, name, t):
    """args.<name> and its row and head strides (0, "packed", for dims never stepped over)."""
    setattr(args, name, _ptr(t))
    if t.numel():
        setattr(args, name + "_row_stride", t.stride(0) if t.shape[0] > 1 else 0)
        setattr(args, name + "_head_stride", t.stride(1) if t.shape[1] > 1 else 0)


def _fwd_args(p, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, conv_weight):
    a = _capi.FwdArgs()
    a.batch, a.hq, a.hkv, a.head_dim = p.batch, p.hq, p.hkv, p.head_dim
    a.total_q, a.total_k = p.total_q, p.total_k
    a.max_seqlen_q, a.max_seqlen_k = p.max_seqlen_q, p.max_seqlen_k
    a.dtype = _capi.DTYPE_CODES[p.spec.dtype]
    for name, t in (("q", q), ("k", k), ("v", v), ("out", out)):
        _set_rows(a, name, t)
    a.cu_seqlens_q, a.cu_seqlens_k = cu_seqlens_q.data_ptr(), cu_seqlens_k.data_ptr()
    a.conv_weight = _ptr(conv_weight)
    a.lse = _ptr(lse)
    a.softmax_scale = p.softmax_scale
    return a


def _device_runtime(t):
    return runtime(t.device.index if t.device.index is not None else torch.cuda.current_device())


def _launch(rt, spec, args, device, workspace_size_fn, run_fn, what):
    """Sizes the workspace of `args`, takes it from PyTorch's caching allocator and runs the op
    of `spec` on the device's current stream: (op, workspace). Call with rt.lock held. The
    allocator's reuse of the workspace is ordered after this launch by the stream, as for any
    tensor freed after an op that used it."""
    lib = rt.lib
    op = rt.op(spec)
    errmsg = lambda: lib.op_errmsg(op)  # noqa: E731
    size = ctypes.c_size_t()
    lib.check(workspace_size_fn(op, ctypes.byref(args), ctypes.byref(size)), errmsg,
              what + "_workspace_size")
    workspace = torch.empty(size.value, dtype=torch.uint8, device=device)
    stream = torch.cuda.current_stream(device).cuda_stream
    lib.check(run_fn(op, ctypes.byref(args), _ptr(workspace), size.value, ctypes.c_void_p(stream)),
              errmsg, what)
    return op, workspace


def forward(q, k, v, cu_seqlens_q, cu_seqlens_k, conv_weight, max_seqlen_q, max_seqlen_k,
            block_size, top_k, causal, softmax_scale, return_selection):
    """The MoBA forward on the current stream of q's device: (out, lse, selection); selection is
    [total_q, hq, top_k] int32 when asked for, else [0, hq, top_k]."""
    p = check_args(q, k, v, cu_seqlens_q, cu_seqlens_k, conv_weight, max_seqlen_q, max_seqlen_k,
                   block_size, top_k, causal, softmax_scale)
    out = torch.empty((p.total_q, p.hq, p.head_dim), dtype=q.dtype, device=q.device)
    lse = torch.empty((p.total_q, p.hq), dtype=torch.float32, device=q.device)
    selection = torch.empty((p.total_q if return_selection else 0, p.hq, p.spec.top_k),
                            dtype=torch.int32, device=q.device)
    rt = _device_runtime(q)
    args = _fwd_args(p, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, conv_weight)
    lib = rt.lib
    with rt.lock:
        op, workspace = _launch(rt, p.spec, args, q.device, lib.fwd_workspace_size, lib.fwd,
                                "mobagen_fwd")
        ws_ptr = _ptr(workspace)
        if return_selection and p.total_q:
            at = lib.fwd_selection(op, ctypes.byref(args), ws_ptr)
            if not at:
                lib.check(_capi.E_ARG, lambda: lib.op_errmsg(op), "mobagen_fwd_selection")
    if return_selection and p.total_q:
        offset = at - ws_ptr
        view = workspace[offset:offset + selection.numel() * 4].view(torch.int32)
        selection.copy_(view.view(selection.shape))
    return out, lse, selection


def _bwd_args(p, fwd, dout, dlse, selection, dq, dk, dv, dconv_weight, deterministic):
    a = _capi.BwdArgs()
    a.fwd = fwd
    _set_rows(a, "dout", dout)
    for name, t in (("dq", dq), ("dk", dk), ("dv", dv)):
        _set_rows(a, name, t)
    a.dlse, a.selection, a.dconv_weight = _ptr(dlse), _ptr(selection), _ptr(dconv_weight)
    a.deterministic = int(bool(deterministic))
    return a


def backward(dout, q, k, v, out, lse, dlse, selection, cu_seqlens_q, cu_seqlens_k, conv_weight,
             max_seqlen_q, max_seqlen_k, block_size, top_k, causal, softmax_scale, deterministic):
    """The MoBA backward on the current stream of q's device: (dq, dk, dv, dconv_weight), dq of
    q's shape, dk and dv of k's (summed over each kv head's query heads), all contiguous in q's
    dtype; dconv_weight float32 [hkv, W, d] (empty without a key convolution). dlse None: no
    gradient through the LSE; selection None (or with no rows): routing runs again."""
    p = check_args(q, k, v, cu_seqlens_q, cu_seqlens_k, conv_weight, max_seqlen_q, max_seqlen_k,
                   block_size, top_k, causal, softmax_scale)
    tensors = {"out": out, "lse": lse, "dout": dout, "dlse": dlse, "selection": selection}
    for name, t in tensors.items():
        if t is not None and not isinstance(t, torch.Tensor):
            raise ArgumentError("%s must be a torch.Tensor, got %s" % (name, type(t).__name__))
    info = {name: None if t is None else describe(t) for name, t in tensors.items()}
    for name in validate_backward(p, info["out"], info["lse"], info["dout"], info["dlse"],
                                  info["selection"]):
        tensors[name] = tensors[name].contiguous()
    if selection is not None and selection.shape[0] == 0:
        tensors["selection"] = None
    rt = _device_runtime(q)
    rt.lib.require_backward()
    dq = torch.empty((p.total_q, p.hq, p.head_dim), dtype=q.dtype, device=q.device)
    dk = torch.empty((p.total_k, p.hkv, p.head_dim), dtype=q.dtype, device=q.device)
    dv = torch.empty_like(dk)
    width = p.spec.conv_width
    dconv = torch.empty((p.hkv, width, p.head_dim) if width else (0,), dtype=torch.float32,
                        device=q.device)
    fwd = _fwd_args(p, q, k, v, tensors["out"], tensors["lse"], cu_seqlens_q, cu_seqlens_k,
                    conv_weight)
    args = _bwd_args(p, fwd, tensors["dout"], tensors["dlse"], tensors["selection"], dq, dk, dv,
                     dconv, deterministic)
    with rt.lock:
        _launch(rt, p.spec, args, q.device, rt.lib.bwd_workspace_size, rt.lib.bwd, "mobagen_bwd")
    return dq, dk, dv, dconv
