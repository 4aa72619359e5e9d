"""ACiM layers: torch layers whose MACs run on a simulated macro."""

from .attention import ATTN_SCALES, ACiMMultiheadAttention
from .base import MODES, ACiMLayer, set_sample_index
from .conv import ACiMConv2d, conv_tiles
from .linear import ACiMLinear

__all__ = [
    "ATTN_SCALES",
    "MODES",
    "ACiMConv2d",
    "ACiMLayer",
    "ACiMLinear",
    "ACiMMultiheadAttention",
    "conv_tiles",
    "set_sample_index",
]
