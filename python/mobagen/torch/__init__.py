"""mobagen for PyTorch: MoBA attention on CUDA tensors through libmobagen.

    from mobagen.torch import moba_attn_varlen, moba_attn_func, MobaAttention

Importing this module registers the custom op mobagen::moba_attn_varlen_fwd (torch.library);
libmobagen.so is loaded at the first call, not at import."""
from ._ops import OP_NAME, moba_attn_varlen_fwd
from .functional import moba_attn_func, moba_attn_varlen
from .module import MobaAttention

__all__ = ["OP_NAME", "MobaAttention", "moba_attn_func", "moba_attn_varlen", "moba_attn_varlen_fwd"]
