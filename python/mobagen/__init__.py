"""mobagen: Mixture of Block Attention kernels generated for each spec (libmobagen).

The top-level package is pure Python and needs neither torch nor a GPU: it holds the spec
parameters, the argument checks and the C library binding. mobagen.torch is the PyTorch API;
mobagen.reference a plain PyTorch implementation of the same math."""
from .errors import ArgumentError, LibraryArgumentError, LibraryNotFoundError, MobagenError
from .spec import SpecParams
from .validate import Problem, TensorInfo, validate_varlen

__version__ = "0.3.2"


def library():
    """The loaded libmobagen (MOBAGEN_LIBRARY, else next to this package, else the source tree's
    build/, else the system loader); raises LibraryNotFoundError naming what was tried."""
    from . import _capi
    return _capi.library()


__all__ = ["ArgumentError", "LibraryArgumentError", "LibraryNotFoundError", "MobagenError", "Problem", "SpecParams",
           "TensorInfo", "library", "validate_varlen", "__version__"]
