"""ctypes declarations of libmobagen's public C API (runtime/mobagen.h) and the library loader.

This is the only module that knows the C names and struct layouts: everything else goes through
`library()`. The layouts are checked against the header by tests/test_capi.py (offsetof from a
compiled probe), so a header change that is not mirrored here fails a test instead of
corrupting arguments.
"""
import ctypes
import ctypes.util
import os
import threading

from .errors import LibraryArgumentError, LibraryNotFoundError, MobagenError

# The API this module declares: mobagen_version()'s major must equal it.
API_MAJOR = 0
API_MINOR = 3

# mobagen_status
OK = 0
STATUS_NAMES = (
    "MOBAGEN_OK", "MOBAGEN_E_ARG", "MOBAGEN_E_SPEC", "MOBAGEN_E_TEMPLATE", "MOBAGEN_E_COMPILE",
    "MOBAGEN_E_NO_NVRTC", "MOBAGEN_E_CACHE", "MOBAGEN_E_IO", "MOBAGEN_E_NOMEM",
    "MOBAGEN_E_NO_DRIVER", "MOBAGEN_E_NO_DEVICE", "MOBAGEN_E_CUDA", "MOBAGEN_E_UNSUPPORTED",
)
E_ARG, E_SPEC, E_NO_DRIVER, E_NO_DEVICE = 1, 2, 9, 10

# mobagen_dtype
DTYPE_BF16 = 0
DTYPE_FP16 = 1
DTYPE_CODES = {"bfloat16": DTYPE_BF16, "float16": DTYPE_FP16}

devptr = ctypes.c_ulonglong


class TuningRestriction(ctypes.Structure):
    _fields_ = [
        ("template_name", ctypes.c_char_p),
        ("knob", ctypes.c_char_p),
        ("values", ctypes.POINTER(ctypes.c_int)),
        ("n_values", ctypes.c_int),
    ]


class SpecParams(ctypes.Structure):
    """struct mobagen_spec_params"""
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("head_dim", ctypes.c_int),
        ("block_size", ctypes.c_int),
        ("top_k", ctypes.c_int),
        ("causal", ctypes.c_int),
        ("conv_width", ctypes.c_int),
        ("dtype", ctypes.c_int),
        ("gqa_group", ctypes.c_int),
        ("tuning", ctypes.POINTER(TuningRestriction)),
        ("n_tuning", ctypes.c_int),
    ]


class FwdArgs(ctypes.Structure):
    """struct mobagen_fwd_args"""
    _fields_ = [
        ("batch", ctypes.c_int),
        ("hq", ctypes.c_int),
        ("hkv", ctypes.c_int),
        ("head_dim", ctypes.c_int),
        ("total_q", ctypes.c_int),
        ("total_k", ctypes.c_int),
        ("max_seqlen_q", ctypes.c_int),
        ("max_seqlen_k", ctypes.c_int),
        ("dtype", ctypes.c_int),
        ("q", devptr),
        ("k", devptr),
        ("v", devptr),
        ("out", devptr),
        ("q_row_stride", ctypes.c_longlong),
        ("q_head_stride", ctypes.c_longlong),
        ("k_row_stride", ctypes.c_longlong),
        ("k_head_stride", ctypes.c_longlong),
        ("v_row_stride", ctypes.c_longlong),
        ("v_head_stride", ctypes.c_longlong),
        ("out_row_stride", ctypes.c_longlong),
        ("out_head_stride", ctypes.c_longlong),
        ("cu_seqlens_q", devptr),
        ("cu_seqlens_k", devptr),
        ("conv_weight", devptr),
        ("lse", devptr),
        ("softmax_scale", ctypes.c_float),
    ]


class BwdArgs(ctypes.Structure):
    """struct mobagen_bwd_args: the forward call's arguments (fwd.out and fwd.lse hold its o and
    LSE), the upstream gradients and the gradient outputs."""
    _fields_ = [
        ("fwd", FwdArgs),
        ("dout", devptr),
        ("dout_row_stride", ctypes.c_longlong),
        ("dout_head_stride", ctypes.c_longlong),
        ("dlse", devptr),
        ("selection", devptr),
        ("dq", devptr),
        ("dk", devptr),
        ("dv", devptr),
        ("dq_row_stride", ctypes.c_longlong),
        ("dq_head_stride", ctypes.c_longlong),
        ("dk_row_stride", ctypes.c_longlong),
        ("dk_head_stride", ctypes.c_longlong),
        ("dv_row_stride", ctypes.c_longlong),
        ("dv_head_stride", ctypes.c_longlong),
        ("dconv_weight", devptr),
        ("deterministic", ctypes.c_int),
    ]


class CtxOptions(ctypes.Structure):
    """struct mobagen_ctx_options (zero fields take their defaults)"""
    _fields_ = [
        ("cache_dir", ctypes.c_char_p),
        ("template_dir", ctypes.c_char_p),
        ("log_level", ctypes.c_int),
        ("log", ctypes.c_void_p),
        ("log_user", ctypes.c_void_p),
        ("progress", ctypes.c_void_p),
        ("progress_user", ctypes.c_void_p),
    ]


_P = ctypes.c_void_p  # opaque handles (mobagen_ctx *, mobagen_op *)
_PROTOTYPES = {
    "mobagen_version": (ctypes.c_char_p, []),
    "mobagen_status_name": (ctypes.c_char_p, [ctypes.c_int]),
    "mobagen_ctx_create": (ctypes.c_int, [ctypes.c_int, ctypes.POINTER(CtxOptions), ctypes.POINTER(_P)]),
    "mobagen_ctx_destroy": (None, [_P]),
    "mobagen_ctx_errmsg": (ctypes.c_char_p, [_P]),
    "mobagen_ctx_arch": (ctypes.c_char_p, [_P]),
    "mobagen_ctx_device_name": (ctypes.c_char_p, [_P]),
    "mobagen_op_create_from_params": (ctypes.c_int, [_P, ctypes.POINTER(SpecParams), ctypes.POINTER(_P)]),
    "mobagen_op_destroy": (None, [_P]),
    "mobagen_op_errmsg": (ctypes.c_char_p, [_P]),
    "mobagen_fwd_workspace_size": (ctypes.c_int, [_P, ctypes.POINTER(FwdArgs), ctypes.POINTER(ctypes.c_size_t)]),
    "mobagen_fwd": (ctypes.c_int, [_P, ctypes.POINTER(FwdArgs), devptr, ctypes.c_size_t, ctypes.c_void_p]),
    "mobagen_fwd_selection": (devptr, [_P, ctypes.POINTER(FwdArgs), devptr]),
}
# The backward: bound when the library has it (None otherwise), so that a forward-only library
# still serves inference; a backward call on one says what is missing.
_OPTIONAL_PROTOTYPES = {
    "mobagen_bwd_workspace_size": (ctypes.c_int, [_P, ctypes.POINTER(BwdArgs), ctypes.POINTER(ctypes.c_size_t)]),
    "mobagen_bwd": (ctypes.c_int, [_P, ctypes.POINTER(BwdArgs), devptr, ctypes.c_size_t, ctypes.c_void_p]),
}

LIBRARY_ENV = "MOBAGEN_LIBRARY"
_SONAMES = ("libmobagen.so.%d" % API_MAJOR, "libmobagen.so")


def parse_version(text):
    """'0.2.0' -> (0, 2, 0); anything else raises ValueError."""
    parts = text.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError("not a MAJOR.MINOR.PATCH version: %r" % text)
    return tuple(int(p) for p in parts)


def candidate_paths(environ=None, package_dir=None):
    """Where the library is looked for, in order: [(how, path or soname)].

    MOBAGEN_LIBRARY when set (and then nothing else: an explicit choice must not be silently
    replaced by another copy), else next to this package, then, when this package is the source
    tree's python/mobagen, the repository's build/ folder, then the system loader."""
    environ = os.environ if environ is None else environ
    package_dir = package_dir or os.path.dirname(os.path.abspath(__file__))
    explicit = environ.get(LIBRARY_ENV)
    if explicit:
        return [(LIBRARY_ENV, explicit)]
    found = []
    for soname in _SONAMES:
        found.append(("next to the package", os.path.join(package_dir, soname)))
    source_dir = os.path.dirname(package_dir)
    if os.path.exists(os.path.join(source_dir, "pyproject.toml")):   # not an installed copy
        repo_build = os.path.join(os.path.dirname(source_dir), "build")
        for soname in _SONAMES:
            found.append(("source tree build", os.path.join(repo_build, soname)))
    for soname in _SONAMES:
        found.append(("system loader", soname))
    by_ldconfig = ctypes.util.find_library("mobagen")
    if by_ldconfig and by_ldconfig not in _SONAMES:
        found.append(("system loader", by_ldconfig))
    return found


def _open(candidates):
    tried = []
    for how, path in candidates:
        if os.sep in path and not os.path.exists(path):
            tried.append("%s (%s): no such file" % (path, how))
            continue
        try:
            return ctypes.CDLL(path), path
        except OSError as e:
            tried.append("%s (%s): %s" % (path, how, e))
    raise LibraryNotFoundError(
        "libmobagen.so could not be loaded. Build it (`make build/libmobagen.so` in the mobagen "
        "repository) and set %s to its path, or install it (`make install`). Tried:\n  %s"
        % (LIBRARY_ENV, "\n  ".join(tried)))


class Library:
    """A loaded libmobagen with typed functions, its version checked against this module."""

    def __init__(self, cdll, path):
        self.path = path
        missing = [n for n in _PROTOTYPES if not hasattr(cdll, n)]
        if missing:
            raise LibraryNotFoundError(
                "%s lacks %s: it predates the C API %d.%d that this package needs"
                % (path, ", ".join(missing), API_MAJOR, API_MINOR))
        for name, (restype, argtypes) in _PROTOTYPES.items():
            fn = getattr(cdll, name)
            fn.restype, fn.argtypes = restype, argtypes
            setattr(self, name[len("mobagen_"):], fn)
        for name, (restype, argtypes) in _OPTIONAL_PROTOTYPES.items():
            fn = getattr(cdll, name, None)
            if fn is not None:
                fn.restype, fn.argtypes = restype, argtypes
            setattr(self, name[len("mobagen_"):], fn)
        self.version_text = self.version().decode(errors="replace")
        try:
            major, minor, _ = parse_version(self.version_text)
        except ValueError:
            raise LibraryNotFoundError("%s reports version %r" % (path, self.version_text)) from None
        if major != API_MAJOR or minor < API_MINOR:
            raise LibraryNotFoundError(
                "%s is version %s; this package needs %d.x with x >= %d (C API %d.%d)"
                % (path, self.version_text, API_MAJOR, API_MINOR, API_MAJOR, API_MINOR))

    @property
    def has_backward(self):
        return self.bwd is not None and self.bwd_workspace_size is not None

    def require_backward(self):
        """Raises NotImplementedError naming this library when it has no mobagen_bwd."""
        if not self.has_backward:
            raise NotImplementedError(
                "%s (version %s) has no MoBA backward (mobagen_bwd, mobagen_bwd_workspace_size): "
                "it is a forward-only build. Build a newer libmobagen (`make build/libmobagen.so`) "
                "to train; for inference run under torch.no_grad()." % (self.path, self.version_text))

    def status_text(self, status):
        name = self.status_name(status)
        return name.decode() if name else "status %d" % status

    def check(self, status, message_fn, what):
        """Raises MobagenError for a non-OK status, with the library's own message
        (LibraryArgumentError, also a ValueError, for MOBAGEN_E_ARG)."""
        if status != OK:
            kind = LibraryArgumentError if status == E_ARG else MobagenError
            raise kind(status, self.status_text(status),
                               "%s failed: %s" % (what, message_fn().decode(errors="replace")))


_lock = threading.Lock()
_library = None


def library():
    """The process's libmobagen (loaded once; the lookup order is candidate_paths())."""
    global _library
    with _lock:
        if _library is None:
            _library = Library(*_open(candidate_paths()))
        return _library


def load_library(path):
    """Loads a specific copy (tests, or programs that manage the path themselves)."""
    return Library(*_open([("explicit path", path)]))
