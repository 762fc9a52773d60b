"""Building blocks of the CAT-Seg cost aggregation head (see ``sam_mi.modeling.aggregator``; CAT-Seg's versions
are in cvlab-kaist/CAT-Seg cat_seg/modeling/transformer/model.py)."""
from .class_attention import (
    AttentionLayer,
    ClassTransformerLayer,
    FullAttention,
    LinearAttention,
    full_attention,
    full_attention_padded,
    linear_attention,
    linear_attention_padded,
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
    "full_attention_padded",
    "linear_attention",
    "linear_attention_padded",
    "shifted_window_mask",
    "window_partition",
    "window_reverse",
]
