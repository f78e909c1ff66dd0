"""mobagen for PyTorch: MoBA attention on CUDA tensors through libmobagen.

    from mobagen.torch import moba_attn_varlen, moba_attn_func, MobaAttention

Importing this module registers the custom ops mobagen::moba_attn_varlen_fwd and
mobagen::moba_attn_varlen_bwd (torch.library; the forward's autograd rule calls the backward);
libmobagen.so is loaded at the first call, not at import."""
import torch as _torch

if not hasattr(_torch.library, "custom_op"):
    raise ImportError("mobagen.torch needs torch >= 2.4 (torch.library.custom_op); this is torch %s"
                      % _torch.__version__)

from ._ops import BWD_OP_NAME, OP_NAME, moba_attn_varlen_bwd, moba_attn_varlen_fwd  # noqa: E402
from .functional import moba_attn_func, moba_attn_varlen  # noqa: E402
from .module import MobaAttention  # noqa: E402

__all__ = ["BWD_OP_NAME", "OP_NAME", "MobaAttention", "moba_attn_func", "moba_attn_varlen",
           "moba_attn_varlen_bwd", "moba_attn_varlen_fwd"]
