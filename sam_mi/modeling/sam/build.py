"""Build the frozen SAM mask generator: registry, checkpoint handling, tiny test configuration.

`build_mask_generator` is the only entry point the rest of SAM-MI uses (docs/CONTRACTS.md); it reads no
config (SAMMI.from_config maps `MODEL.SAM_MI.SAM.*` onto its arguments).
"""

import os
from functools import partial
from typing import Callable, Dict, Mapping, Optional

import torch
from torch import nn

from .point_decoder import PointPromptedSAM

__all__ = [
    "SAM_CHECKPOINT_URLS",
    "VARIANTS",
    "build_mask_generator",
    "build_sam_model",
    "build_tiny_sam",
    "infer_sam_type",
    "load_checkpoint",
    "require_checkpoint",
    "sam_param_count",
]

CONFIG_KEY = "MODEL.SAM_MI.SAM.CHECKPOINT"

SAM_CHECKPOINT_URLS: Dict[str, str] = {
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
}

# Image-encoder width -> official type; used to tell the user which type a mismatching checkpoint is.
_WIDTH_TO_TYPE = {1280: "vit_h", 1024: "vit_l", 768: "vit_b", 32: "tiny"}

#: Official SAM's input side; its position embeddings and rel-pos tables are sized for it.
OFFICIAL_IMAGE_SIZE = 1024

VARIANTS = ("sam", "hq_sam", "sam2", "mobile_sam", "fast_sam")


def build_tiny_sam(image_size: int = 128, sam_module=None, hq: bool = False) -> nn.Module:
    """A tiny randomly initialised SAM for tests, built from segment-anything's own classes.

    ViT: patch 16, embed 32, depth 2 (block 1 global), 2 heads, window 4; prompt dim 32; two-way transformer
    depth 2, 2 heads, MLP 64; 3 multimask outputs. `sam_module` = `segment_anything_hq` with hq=True builds
    the HQ decoder (`MaskDecoderHQ`, vit_dim 32) from that package's classes instead.
    """
    if sam_module is None:
        import segment_anything as sam_module  # noqa: F811 - the default package
    m = sam_module.modeling
    embed_dim, prompt_dim, patch = 32, 32, 16
    if image_size % patch:
        raise ValueError(f"tiny SAM needs image_size divisible by {patch}, got {image_size}")
    grid = image_size // patch
    decoder_cls = m.MaskDecoderHQ if hq else m.MaskDecoder
    decoder_kwargs = {"vit_dim": embed_dim} if hq else {}
    return m.Sam(
        image_encoder=m.ImageEncoderViT(
            img_size=image_size,
            patch_size=patch,
            embed_dim=embed_dim,
            depth=2,
            num_heads=2,
            mlp_ratio=2.0,
            out_chans=prompt_dim,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=min(4, grid),
            global_attn_indexes=(1,),
        ),
        prompt_encoder=m.PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=4,
        ),
        mask_decoder=decoder_cls(
            num_multimask_outputs=3,
            transformer=m.TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=64, num_heads=2),
            transformer_dim=prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=32,
            **decoder_kwargs,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def infer_sam_type(state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    """Guess the SAM type of a state dict from its image-encoder width (1280/1024/768 -> vit_h/l/b)."""
    for key, dim in (("image_encoder.pos_embed", -1), ("image_encoder.patch_embed.proj.weight", 0)):
        if key in state_dict:
            width = int(state_dict[key].shape[dim])
            return _WIDTH_TO_TYPE.get(width, f"an image encoder of width {width}")
    return None


def _missing_checkpoint_message(checkpoint: str, model_type: str, variant: str, url: Optional[str]) -> str:
    where = f"'{checkpoint}' does not exist" if checkpoint else "no checkpoint path was given"
    fetch = f"Download it from {url}" if url else "Download the official checkpoint of that type"
    return (
        f"{variant} checkpoint for model type '{model_type}': {where}. {fetch} and set {CONFIG_KEY} to its "
        f"path (or use MODEL.SAM_MI.SAM.MODEL_TYPE 'tiny' for a random test model)."
    )


def require_checkpoint(checkpoint: str, model_type: str, variant: str = "sam", url: Optional[str] = None) -> None:
    """Raise FileNotFoundError naming the download URL and the config key unless `checkpoint` is a file."""
    if not checkpoint or not os.path.isfile(checkpoint):
        raise FileNotFoundError(_missing_checkpoint_message(checkpoint, model_type, variant, url))


def load_checkpoint(
    model: nn.Module,
    checkpoint: str,
    model_type: str,
    variant: str = "sam",
    url: Optional[str] = None,
    strict: bool = True,
) -> None:
    """Load `checkpoint` into `model` with clear errors.

    Raises FileNotFoundError (naming `url` and the config key) for a missing file, and ValueError naming
    the type the checkpoint looks like when tensor shapes do not match `model_type`.
    `strict=False` is for variants whose official loader is non-strict (HQ-SAM), shape checks still apply.
    """
    require_checkpoint(checkpoint, model_type, variant, url)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict"):  # SAM2 / training checkpoints wrap the weights
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ValueError(f"{checkpoint} does not hold a state dict (got {type(state).__name__})")
    own = model.state_dict()
    bad = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if bad:
        looks = infer_sam_type(state)
        hint = f"it looks like a '{looks}' checkpoint" if looks else "its type could not be inferred"
        raise ValueError(
            f"{variant} checkpoint {checkpoint} does not match model type '{model_type}': {len(bad)} tensors "
            f"have other shapes (e.g. {bad[0]}: {tuple(state[bad[0]].shape)} vs {tuple(own[bad[0]].shape)}); "
            f"{hint}. Set MODEL.SAM_MI.SAM.MODEL_TYPE to the checkpoint's type."
        )
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and (missing or unexpected):
        raise ValueError(
            f"{variant} checkpoint {checkpoint} does not fit model type '{model_type}': "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}). "
            f"Is it a checkpoint of another SAM variant (MODEL.SAM_MI.SAM.VARIANT)?"
        )
    model.load_state_dict(state, strict=False)


def build_sam_model(model_type: str, checkpoint: str = "", image_size: int = OFFICIAL_IMAGE_SIZE) -> nn.Module:
    """segment-anything `Sam` of `model_type` ("vit_h", "vit_l", "vit_b" loaded from `checkpoint`; "tiny")."""
    if model_type == "tiny":
        return build_tiny_sam(image_size)
    from segment_anything import sam_model_registry

    if model_type not in SAM_CHECKPOINT_URLS:
        raise ValueError(
            f"unknown SAM model type '{model_type}'; choose one of {sorted(SAM_CHECKPOINT_URLS)} or 'tiny'"
        )
    if image_size != OFFICIAL_IMAGE_SIZE:
        raise ValueError(
            f"official SAM '{model_type}' runs at image size {OFFICIAL_IMAGE_SIZE} (fixed position embeddings); "
            f"got MODEL.SAM_MI.SAM.IMAGE_SIZE={image_size}"
        )
    require_checkpoint(checkpoint, model_type, "sam", SAM_CHECKPOINT_URLS[model_type])  # before a slow build
    model = sam_model_registry[model_type](checkpoint=None)
    load_checkpoint(model, checkpoint, model_type, "sam", SAM_CHECKPOINT_URLS[model_type])
    return model


def sam_param_count(model_type: str, variant: str = "sam") -> Dict[str, int]:
    """Parameter counts of a randomly initialised model: {"total", "image_encoder", "prompt_encoder",
    "mask_decoder"}. Builds the full model (vit_h: 641M parameters, ~2.6 GB), so use it in tools, not tests."""
    if variant == "sam":
        if model_type == "tiny":
            model = build_tiny_sam(128)
        else:
            from segment_anything import sam_model_registry

            model = sam_model_registry[model_type](checkpoint=None)
    elif variant == "hq_sam":
        from .variants import build_hq_sam_model

        model = build_hq_sam_model(model_type, checkpoint=None, image_size=128 if model_type == "tiny" else 1024)
    else:
        raise ValueError(f"sam_param_count supports variants 'sam' and 'hq_sam', got '{variant}'")
    counts = {"total": sum(p.numel() for p in model.parameters())}
    for name in ("image_encoder", "prompt_encoder", "mask_decoder"):
        counts[name] = sum(p.numel() for p in getattr(model, name).parameters())
    return counts


def _build_variant(variant: str) -> Callable[..., PointPromptedSAM]:
    if variant == "sam":
        return lambda model_type, checkpoint, image_size, **kw: PointPromptedSAM(
            build_sam_model(model_type, checkpoint, image_size), image_size, **kw
        )
    from . import variants  # optional packages are imported inside each builder

    builders = {
        "hq_sam": variants.build_hq_sam_generator,
        "sam2": variants.build_sam2_generator,
        "mobile_sam": variants.build_mobile_sam_generator,
        "fast_sam": variants.build_fast_sam_generator,
    }
    if variant not in builders:
        raise ValueError(f"unknown SAM variant '{variant}' (MODEL.SAM_MI.SAM.VARIANT); choose one of {VARIANTS}")
    return builders[variant]


def build_mask_generator(
    variant: str,
    model_type: str,
    checkpoint: str,
    image_size: int,
    points_per_batch: int,
    pred_iou_thresh: float,
    stability_score_thresh: float,
    stability_score_offset: float,
    box_nms_thresh: float,
) -> PointPromptedSAM:
    """Frozen point-prompted mask generator of `variant` ("sam", "hq_sam", "sam2", "mobile_sam", "fast_sam").

    model_type is the variant's registry key ("vit_h"/"vit_l"/"vit_b"/"tiny" for SAM); checkpoint is
    required unless model_type is "tiny". The thresholds are SAM AMG's (data_and_sam.md §3.1).
    """
    build = _build_variant(variant)
    return build(
        model_type=model_type,
        checkpoint=checkpoint,
        image_size=image_size,
        points_per_batch=points_per_batch,
        pred_iou_thresh=pred_iou_thresh,
        stability_score_thresh=stability_score_thresh,
        stability_score_offset=stability_score_offset,
        box_nms_thresh=box_nms_thresh,
    )
