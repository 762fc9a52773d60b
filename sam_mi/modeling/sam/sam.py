"""segment-anything's SAM (paper Sec. 3.1; SAM-H in the paper's main results) as a registered mask generator.

`build_sam_model` is the one place that builds a segment-anything `Sam`: the official types from their
checkpoints, the same architectures randomly initialised at any input size (benchmarks, ``RANDOM_INIT``), and
the tiny test configuration (optionally loaded from a checkpoint written by tools/train_tiny_sam.py).
"""
from functools import partial
from typing import Dict, Optional, Tuple

from detectron2.config import configurable
from torch import nn

from .fast_attention import apply_sam_fast_path
from .checkpoint import OFFICIAL_IMAGE_SIZE, SAM_CHECKPOINT_URLS, load_checkpoint, require_checkpoint
from .point_decoder import PointPromptedSAM
from .registry import mask_generator_args, register_mask_generator

#: ViT hyper-parameters of the official types (segment-anything segment_anything/build_sam.py):
#: (embed dim, depth, heads, global-attention block indexes). tests/test_sam.py checks them against
#: segment-anything's own builders, so a new release that changed them would be noticed.
SAM_ARCHS: Dict[str, Tuple[int, int, int, Tuple[int, ...]]] = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}
_PROMPT_DIM = 256  # SAM's prompt / decoder width, the same for every type
_PIXEL_MEAN = [123.675, 116.28, 103.53]
_PIXEL_STD = [58.395, 57.12, 57.375]


def _sam_from_parts(sam_module, image_size: int, encoder_kwargs: Dict, prompt_dim: int, mask_in_chans: int,
                    transformer_kwargs: Dict, iou_head_hidden_dim: int, hq: bool = False) -> nn.Module:
    """Assemble `Sam` (or HQ-SAM's `Sam` when ``sam_module`` is segment_anything_hq and ``hq``) from its parts.

    The parts are constructed in segment-anything's order (encoder, prompt encoder, two-way transformer,
    decoder), so a seeded random initialisation is the one segment-anything's own builders give.
    """
    m = sam_module.modeling
    grid = image_size // 16
    image_encoder = m.ImageEncoderViT(
        img_size=image_size, patch_size=16, out_chans=prompt_dim, qkv_bias=True, use_rel_pos=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), **encoder_kwargs,
    )
    prompt_encoder = m.PromptEncoder(
        embed_dim=prompt_dim, image_embedding_size=(grid, grid), input_image_size=(image_size, image_size),
        mask_in_chans=mask_in_chans,
    )
    transformer = m.TwoWayTransformer(embedding_dim=prompt_dim, **transformer_kwargs)
    decoder_cls = m.MaskDecoderHQ if hq else m.MaskDecoder
    extra = {"vit_dim": encoder_kwargs["embed_dim"]} if hq else {}
    mask_decoder = decoder_cls(num_multimask_outputs=3, transformer=transformer, transformer_dim=prompt_dim,
                               iou_head_depth=3, iou_head_hidden_dim=iou_head_hidden_dim, **extra)
    return m.Sam(image_encoder=image_encoder, prompt_encoder=prompt_encoder, mask_decoder=mask_decoder,
                 pixel_mean=_PIXEL_MEAN, pixel_std=_PIXEL_STD)


def build_official_architecture(model_type: str, image_size: int = OFFICIAL_IMAGE_SIZE, sam_module=None,
                                hq: bool = False) -> nn.Module:
    """Randomly initialised SAM of an official type at any input side divisible by 16."""
    if sam_module is None:
        import segment_anything as sam_module  # noqa: F811 - the default package
    if model_type not in SAM_ARCHS:
        raise ValueError(f"unknown SAM model type '{model_type}'; choose one of {sorted(SAM_ARCHS)} or 'tiny'")
    if image_size % 16:
        raise ValueError(f"SAM's image size must be divisible by its patch size 16, got {image_size}")
    dim, depth, heads, global_attn = SAM_ARCHS[model_type]
    return _sam_from_parts(
        sam_module, image_size,
        {"embed_dim": dim, "depth": depth, "num_heads": heads, "mlp_ratio": 4.0, "window_size": 14,
         "global_attn_indexes": global_attn},
        _PROMPT_DIM, 16,
        {"depth": 2, "mlp_dim": 2048, "num_heads": 8}, 256,
        hq=hq,
    )


def build_tiny_sam(image_size: int = 128, sam_module=None, hq: bool = False) -> nn.Module:
    """A tiny SAM for tests and the demo, built from segment-anything's own classes (random weights).

    ViT: patch 16, embed 32, depth 2 (block 1 global), 2 heads, window 4; prompt dim 32; two-way transformer
    depth 2, 2 heads, MLP 64; 3 multimask outputs. ``sam_module`` = ``segment_anything_hq`` with hq=True builds
    the HQ decoder (`MaskDecoderHQ`, vit_dim 32) from that package's classes instead.
    """
    if sam_module is None:
        import segment_anything as sam_module  # noqa: F811 - the default package
    if image_size % 16:
        raise ValueError(f"tiny SAM needs image_size divisible by 16, got {image_size}")
    grid = image_size // 16
    return _sam_from_parts(
        sam_module, image_size,
        {"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0, "window_size": min(4, grid),
         "global_attn_indexes": (1,)},
        32, 4,
        {"depth": 2, "mlp_dim": 64, "num_heads": 2}, 32,
        hq=hq,
    )


def build_sam_model(model_type: str, checkpoint: Optional[str] = "", image_size: int = OFFICIAL_IMAGE_SIZE,
                    random_init: bool = False) -> nn.Module:
    """segment-anything `Sam` of ``model_type`` ("vit_h", "vit_l", "vit_b" or "tiny").

    Official types load ``checkpoint`` (required, at image size 1024: their position embeddings are fixed)
    unless ``random_init``, which builds the same architecture randomly initialised at any ``image_size``
    (latency benchmarks). "tiny" is random unless a checkpoint is given (tools/train_tiny_sam.py writes one).
    """
    if model_type == "tiny":
        model = build_tiny_sam(image_size)
        if checkpoint and not random_init:
            load_checkpoint(model, checkpoint, model_type, "sam")
        return model
    if model_type not in SAM_CHECKPOINT_URLS:
        raise ValueError(
            f"unknown SAM model type '{model_type}'; choose one of {sorted(SAM_CHECKPOINT_URLS)} or 'tiny'"
        )
    if random_init:
        return build_official_architecture(model_type, image_size)
    if image_size != OFFICIAL_IMAGE_SIZE:
        raise ValueError(
            f"official SAM '{model_type}' runs at image size {OFFICIAL_IMAGE_SIZE} (fixed position embeddings); "
            f"got MODEL.SAM_MI.SAM.IMAGE_SIZE={image_size} (MODEL.SAM_MI.SAM.RANDOM_INIT True allows other sizes)"
        )
    require_checkpoint(checkpoint, model_type, "sam", SAM_CHECKPOINT_URLS[model_type])  # before a slow build
    model = build_official_architecture(model_type, image_size)
    load_checkpoint(model, checkpoint, model_type, "sam", SAM_CHECKPOINT_URLS[model_type])
    return model


@register_mask_generator("sam")
@configurable(from_config=mask_generator_args)
def build_sam_generator(model_type: str, checkpoint: str = "", image_size: int = OFFICIAL_IMAGE_SIZE,
                        *, random_init: bool = False, sdpa: bool = True, **decoding) -> PointPromptedSAM:
    """SAM inside the point-prompted decoding of point_decoder.py (filters and NMS of SAM's AMG)."""
    model = build_sam_model(model_type, checkpoint, image_size, random_init)
    apply_sam_fast_path(model, sdpa=sdpa)
    return PointPromptedSAM(model, image_size, **decoding)
