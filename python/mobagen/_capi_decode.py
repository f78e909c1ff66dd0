"""ctypes declarations of libmobagen's serving calls (runtime/mobagen.h: mobagen_kv_cache,
mobagen_append, mobagen_decode, ...), beside _capi.py, which holds the forward's. The layouts are
checked against the header by tests/test_capi.py like _capi's."""
import ctypes

from . import _capi

devptr = _capi.devptr

# MOBAGEN_KV_E_* bits of the cache's error word
KV_E_PAGE, KV_E_FULL, KV_E_QLEN, KV_E_DROP = 1, 2, 4, 8


class KvCache(ctypes.Structure):
    """struct mobagen_kv_cache"""
    _fields_ = [
        ("n_pages", ctypes.c_int),
        ("page_size", ctypes.c_int),
        ("max_pages", ctypes.c_int),
        ("hkv", ctypes.c_int),
        ("head_dim", ctypes.c_int),
        ("dtype", ctypes.c_int),
        ("k_pages", devptr),
        ("v_pages", devptr),
        ("kraw_pages", devptr),
        ("centroid_sum", devptr),
        ("page_table", devptr),
        ("seq_lens", devptr),
        ("error", devptr),
    ]


class AppendArgs(ctypes.Structure):
    """struct mobagen_append_args"""
    _fields_ = [
        ("batch", ctypes.c_int),
        ("max_new", ctypes.c_int),
        ("total_new", ctypes.c_int),
        ("k", devptr),
        ("v", devptr),
        ("k_row_stride", ctypes.c_longlong),
        ("v_row_stride", ctypes.c_longlong),
        ("cu_seqlens_new", devptr),
        ("conv_weight", devptr),
    ]


class DecodeArgs(ctypes.Structure):
    """struct mobagen_decode_args"""
    _fields_ = [
        ("batch", ctypes.c_int),
        ("hq", ctypes.c_int),
        ("max_q_len", ctypes.c_int),
        ("total_q", ctypes.c_int),
        ("max_seqlen", ctypes.c_int),
        ("q", devptr),
        ("out", devptr),
        ("lse", devptr),
        ("sel", devptr),
        ("q_row_stride", ctypes.c_longlong),
        ("out_row_stride", ctypes.c_longlong),
        ("cu_seqlens_q", devptr),
        ("softmax_scale", ctypes.c_float),
    ]


class TruncateArgs(ctypes.Structure):
    """struct mobagen_truncate_args"""
    _fields_ = [
        ("batch", ctypes.c_int),
        ("drop", devptr),
        ("new_lens", devptr),
    ]


_P = ctypes.c_void_p
_PROTOTYPES = {
    "mobagen_append": (ctypes.c_int, [_P, ctypes.POINTER(KvCache), ctypes.POINTER(AppendArgs), _P]),
    "mobagen_decode_workspace_size": (ctypes.c_int, [_P, ctypes.POINTER(KvCache), ctypes.POINTER(DecodeArgs),
                                                     ctypes.POINTER(ctypes.c_size_t)]),
    "mobagen_decode": (ctypes.c_int, [_P, ctypes.POINTER(KvCache), ctypes.POINTER(DecodeArgs), devptr,
                                      ctypes.c_size_t, _P]),
    "mobagen_kv_cache_check": (ctypes.c_int, [_P, ctypes.POINTER(KvCache), _P, ctypes.POINTER(ctypes.c_int)]),
}
# Bound when the library has them (a library older than the rollback lacks mobagen_kv_truncate;
# calling it then raises LibraryNotFoundError naming the call).
_OPTIONAL_PROTOTYPES = {
    "mobagen_kv_truncate": (ctypes.c_int, [_P, ctypes.POINTER(KvCache), ctypes.POINTER(TruncateArgs), _P]),
}


class Functions:
    """The serving calls of a loaded Library (the same shared object, opened again by path:
    dlopen returns the loaded copy)."""

    def __init__(self, lib):
        cdll = ctypes.CDLL(lib.path)
        missing = [n for n in _PROTOTYPES if not hasattr(cdll, n)]
        if missing:
            raise _capi.LibraryNotFoundError("%s lacks %s: it predates decode over a paged KV cache"
                                             % (lib.path, ", ".join(missing)))
        for name, (restype, argtypes) in list(_PROTOTYPES.items()) + list(_OPTIONAL_PROTOTYPES.items()):
            if not hasattr(cdll, name):
                setattr(self, name[len("mobagen_"):], _missing(lib.path, name))
                continue
            fn = getattr(cdll, name)
            fn.restype, fn.argtypes = restype, argtypes
            setattr(self, name[len("mobagen_"):], fn)


def _missing(path, name):
    def call(*args):
        raise _capi.LibraryNotFoundError("%s lacks %s: it predates that call" % (path, name))
    return call


_functions = {}


def functions(lib):
    """Functions of `lib`, bound once per Library."""
    f = _functions.get(id(lib))
    if f is None:
        f = _functions[id(lib)] = Functions(lib)
    return f
