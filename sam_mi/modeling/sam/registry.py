"""The registry of mask generators (SAM and its variants, paper Table 9) and the one builder the model uses.

Each entry is ``@configurable``: called with a config it reads ``MODEL.SAM_MI.SAM`` through
:func:`mask_generator_args`; called with keyword arguments it builds the same object without a config
(scripts, tests, benchmarks). A new variant is one file with one registration::

    @register_mask_generator("my_sam")
    @configurable(from_config=mask_generator_args)
    def build_my_sam(model_type, checkpoint, image_size, **decoding) -> PointPromptedSAM: ...

and ``MODEL.SAM_MI.SAM.VARIANT my_sam`` selects it. Every registered object returns a module with SAM-MI's
mask-generator interface (docs/CONTRACTS.md): ``encode(images) -> embeddings`` and
``generate(embedding, points, image_size, out_size) -> (masks, scores)``.
"""
from typing import Callable, Dict, List

import torch
from detectron2.utils.registry import Registry
from torch import nn

#: Seed of every randomly initialised (frozen) mask generator; see build_mask_generator.
RANDOM_WEIGHTS_SEED = 0

MASK_GENERATOR_REGISTRY = Registry("SAM_MI_MASK_GENERATOR")
MASK_GENERATOR_REGISTRY.__doc__ = "Frozen point-prompted mask generators, keyed by MODEL.SAM_MI.SAM.VARIANT."


def register_mask_generator(variant: str) -> Callable:
    """Register a builder under the config value ``variant`` (lower-case names, as the configs use)."""

    def deco(obj: Callable) -> Callable:
        # fvcore's Registry keys by __name__; variants are keyed by their short config name instead.
        MASK_GENERATOR_REGISTRY._do_register(variant, obj)
        return obj

    return deco


def registered_variants() -> List[str]:
    """The variants MODEL.SAM_MI.SAM.VARIANT accepts (the registry is the only list of them)."""
    return sorted(name for name, _ in MASK_GENERATOR_REGISTRY)


def mask_generator_args(cfg) -> Dict:
    """The arguments every registered builder takes, read from ``MODEL.SAM_MI.SAM``.

    model_type is the variant's own registry key ("vit_h"/"vit_l"/"vit_b"/"tiny" for SAM); checkpoint is
    required unless model_type is "tiny" or RANDOM_INIT is set; the thresholds are those of SAM's automatic
    mask generator (segment-anything segment_anything/automatic_mask_generator.py); ``sdpa`` patches the
    image encoder's attention (sam/fast_attention.py) where the variant has segment-anything's, the other
    keys go to the point decoder (sam/point_decoder.py).
    """
    s = cfg.MODEL.SAM_MI.SAM
    cache = None
    if s.EMBEDDING_CACHE:  # read and filled at test time only (the model passes use_cache in inference)
        from .embedding_cache import SAMEmbeddingCache

        cache = SAMEmbeddingCache(s.EMBEDDING_CACHE)
    return {
        "model_type": s.MODEL_TYPE,
        "checkpoint": s.CHECKPOINT,
        "image_size": s.IMAGE_SIZE,
        "random_init": s.RANDOM_INIT,
        "points_per_batch": s.POINTS_PER_BATCH,
        "pred_iou_thresh": s.PRED_IOU_THRESH,
        "stability_score_thresh": s.STABILITY_SCORE_THRESH,
        "stability_score_offset": s.STABILITY_SCORE_OFFSET,
        "box_nms_thresh": s.BOX_NMS_THRESH,
        "masks_per_point": s.MASKS_PER_POINT,
        "sdpa": s.SDPA,
        "fast_decoder": s.FAST_DECODER,
        "amp": s.AMP,
        "embedding_cache": cache,
    }


def get_mask_generator_builder(variant: str) -> Callable:
    """The registered builder of ``variant``, or a ValueError listing the registered ones."""
    if variant not in MASK_GENERATOR_REGISTRY:
        raise ValueError(
            f"unknown SAM variant '{variant}' (MODEL.SAM_MI.SAM.VARIANT); registered: {registered_variants()}"
        )
    return MASK_GENERATOR_REGISTRY.get(variant)


def has_random_weights(cfg) -> bool:
    """Whether the config's mask generator is randomly initialised (tiny without checkpoint, RANDOM_INIT)."""
    s = cfg.MODEL.SAM_MI.SAM
    return bool(s.RANDOM_INIT) or (s.MODEL_TYPE == "tiny" and not s.CHECKPOINT)


def build_mask_generator(cfg) -> nn.Module:
    """The frozen mask generator of ``MODEL.SAM_MI.SAM.VARIANT``, built from the config.

    A frozen generator with random weights is never trained nor saved, so it must be the same module on every
    rank and in every process that rebuilds the model (training, evaluation, a resumed run): it is built under
    its own fixed seed, leaving the global random state as it was.
    """
    builder = get_mask_generator_builder(cfg.MODEL.SAM_MI.SAM.VARIANT)
    if not has_random_weights(cfg):
        return builder(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        return builder(cfg)


def create_mask_generator(variant: str, *args, **kwargs) -> nn.Module:
    """The same without a config: ``create_mask_generator("sam", model_type="tiny", image_size=128, ...)``."""
    return get_mask_generator_builder(variant)(*args, **kwargs)
