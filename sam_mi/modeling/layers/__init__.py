"""Building blocks of the CAT-Seg cost aggregation head (see ``sam_mi.modeling.aggregator``)."""
from .class_attention import (
    AttentionLayer,
    ClassTransformerLayer,
    FullAttention,
    LinearAttention,
    full_attention,
    linear_attention,
)
from .swin_blocks import (
    GuidedSwinBlock,
    GuidedWindowAttention,
    Mlp,
    SwinTransformerBlockWrapper,
    shifted_window_mask,
    window_partition,
    window_reverse,
)
from .upsample_decoder import DoubleConv, Up

__all__ = [
    "AttentionLayer",
    "ClassTransformerLayer",
    "DoubleConv",
    "FullAttention",
    "GuidedSwinBlock",
    "GuidedWindowAttention",
    "LinearAttention",
    "Mlp",
    "SwinTransformerBlockWrapper",
    "Up",
    "full_attention",
    "linear_attention",
    "shifted_window_mask",
    "window_partition",
    "window_reverse",
]
