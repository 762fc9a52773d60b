"""Frozen SAM (and variants) decoding masks from sparse point prompts; see point_decoder.py."""

from .build import (
    SAM_CHECKPOINT_URLS,
    VARIANTS,
    build_mask_generator,
    build_sam_model,
    build_tiny_sam,
    infer_sam_type,
    load_checkpoint,
    sam_param_count,
)
from .point_decoder import PointPromptedSAM, filter_candidates, logits_to_out_size, points_to_input_frame

__all__ = [
    "SAM_CHECKPOINT_URLS",
    "VARIANTS",
    "PointPromptedSAM",
    "build_mask_generator",
    "build_sam_model",
    "build_tiny_sam",
    "filter_candidates",
    "infer_sam_type",
    "load_checkpoint",
    "logits_to_out_size",
    "points_to_input_frame",
    "sam_param_count",
]
