"""Frozen SAM and its variants as point-prompted mask generators (paper Sec. 3.2-3.3, Table 9).

One registry (registry.py), one file per variant; importing this package registers them all. Optional
packages (segment-anything-hq, sam2, ultralytics) are imported only when their variant is built.
"""
from . import fast_sam, hq_sam, mobile_sam, sam, sam2_image  # noqa: F401  (register the variants)
from .checkpoint import (
    OFFICIAL_IMAGE_SIZE,
    SAM_CHECKPOINT_URLS,
    infer_sam_type,
    load_checkpoint,
    require_checkpoint,
)
from .point_decoder import PointPromptedSAM, filter_candidates, logits_to_out_size, points_to_input_frame
from .registry import (
    MASK_GENERATOR_REGISTRY,
    build_mask_generator,
    create_mask_generator,
    mask_generator_args,
    register_mask_generator,
    registered_variants,
)
from .param_count import sam_param_count
from .sam import SAM_ARCHS, build_official_architecture, build_sam_model, build_tiny_sam

__all__ = [
    "MASK_GENERATOR_REGISTRY",
    "OFFICIAL_IMAGE_SIZE",
    "SAM_ARCHS",
    "SAM_CHECKPOINT_URLS",
    "PointPromptedSAM",
    "build_mask_generator",
    "build_official_architecture",
    "build_sam_model",
    "build_tiny_sam",
    "create_mask_generator",
    "filter_candidates",
    "infer_sam_type",
    "load_checkpoint",
    "logits_to_out_size",
    "mask_generator_args",
    "points_to_input_frame",
    "register_mask_generator",
    "registered_variants",
    "require_checkpoint",
    "sam_param_count",
]
