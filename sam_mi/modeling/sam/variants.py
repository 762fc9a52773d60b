"""SAM variants behind the `PointPromptedSAM` interface (paper Table 9 compares SAM variants).

Each variant's package is optional and imported only when that variant is built. Extra encoder features a
variant's decoder needs are packed into the single embedding tensor `encode` returns (channels
concatenated at the embedding grid, higher-resolution maps folded with pixel_unshuffle, lossless), so the
contract `encode -> Tensor[B,C,h',w']`, `generate(embedding[C,h',w'], ...)` holds for all of them; C is
variant specific and callers must treat the embedding as opaque.

Status here (CPU, no weights): "hq_sam" (segment-anything-hq 0.3) and "sam2" (PyPI sam2 1.1.0, installed
with SAM2_BUILD_CUDA=0, no compilation) are tested with tiny random models. "mobile_sam" and "fast_sam"
(paper Table 9's fast variants) are built from `ultralytics` in ultralytics_variants.py (re-exported here)
and tested with tiny random models of their real architectures (tests/test_sam_variants.py).
"""

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .build import OFFICIAL_IMAGE_SIZE, build_tiny_sam, load_checkpoint, require_checkpoint
from .point_decoder import PointPromptedSAM
from .ultralytics_variants import build_fast_sam_generator, build_mobile_sam_generator

__all__ = [
    "HQSAMPointPrompted",
    "SAM2PointPrompted",
    "build_hq_sam_model",
    "build_hq_sam_generator",
    "build_sam2_model",
    "build_sam2_generator",
    "build_mobile_sam_generator",
    "build_fast_sam_generator",
]

HQ_SAM_CHECKPOINT_URLS = {
    t: f"https://huggingface.co/lkeab/hq-sam/resolve/main/sam_hq_{t}.pth"
    for t in ("vit_h", "vit_l", "vit_b", "vit_tiny")
}
SAM2_CONFIGS = {
    "hiera_t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "hiera_s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "hiera_b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "hiera_l": "configs/sam2.1/sam2.1_hiera_l.yaml",
}
_SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_{}.pt"
SAM2_CHECKPOINT_URLS = {
    "hiera_t": _SAM2_URL.format("hiera_tiny"),
    "hiera_s": _SAM2_URL.format("hiera_small"),
    "hiera_b+": _SAM2_URL.format("hiera_base_plus"),
    "hiera_l": _SAM2_URL.format("hiera_large"),
}
# Tiny SAM2 for tests: Hiera-T config shrunk (4 stages of 1 block, width 16, windowed attention only); the
# input side (a multiple of 128, so that every Hiera stage holds whole 4x4 windows) is added by build_sam2_model.
_SAM2_TINY_OVERRIDES = [
    "++model.image_encoder.trunk.embed_dim=16",
    "++model.image_encoder.trunk.num_heads=1",
    "++model.image_encoder.trunk.stages=[1,1,1,1]",
    "++model.image_encoder.trunk.global_att_blocks=[]",  # every block after the first pools q
    "++model.image_encoder.trunk.window_spec=[4,4,4,4]",
    "++model.image_encoder.neck.backbone_channel_list=[128,64,32,16]",
]


def _require(module: str, pip_name: str, extra: str = ""):
    """Import an optional package or say which pip package provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"this SAM variant needs the '{pip_name}' package: pip install {pip_name}{extra}") from e


def _thresholds(kw: dict) -> dict:
    keys = ("points_per_batch", "pred_iou_thresh", "stability_score_thresh", "stability_score_offset", "box_nms_thresh")
    return {k: kw[k] for k in keys}


# ---------------------------------------------------------------------------------------------- HQ-SAM
class HQSAMPointPrompted(PointPromptedSAM):
    """HQ-SAM: SAM plus an HQ token fed with an early ViT feature (the first global-attention block's output).

    Embedding = cat([SAM embedding (prompt dim), early ViT feature (vit dim)], channels). In multimask mode
    HQ's decoder returns only the best of SAM's 3 masks (+ HQ residual), i.e. ONE candidate per point, so
    the AMG filters see N candidates instead of 3N. hq_token_only=False (SAM mask + HQ correction) is the
    default of HQ-SAM's predictor/AMG.
    """

    def __init__(self, sam: nn.Module, image_size: int, hq_token_only: bool = False, **kw) -> None:
        super().__init__(sam, image_size, **kw)
        self.hq_token_only = bool(hq_token_only)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        emb, interm = self.sam.image_encoder(x)
        return torch.cat([emb, interm[0].permute(0, 3, 1, 2)], dim=1)

    def _decode(
        self, embedding: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        c = self.sam.prompt_encoder.embed_dim
        emb, vit = embedding[:, :c], embedding[:, c:].permute(0, 2, 3, 1)
        sparse, dense = self.sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        return self.sam.mask_decoder(
            image_embeddings=emb,
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
            hq_token_only=self.hq_token_only,
            interm_embeddings=[vit],
        )


def build_hq_sam_model(model_type: str, checkpoint: Optional[str], image_size: int) -> nn.Module:
    """segment_anything_hq `Sam` ("vit_h", "vit_l", "vit_b", "vit_tiny"; "tiny" = random test model).

    checkpoint=None builds random weights (parameter counts only); "" or a missing path raises."""
    hq = _require("segment_anything_hq", "segment-anything-hq", "==0.3")
    if model_type == "tiny":
        return build_tiny_sam(image_size, sam_module=hq, hq=True)
    if model_type not in HQ_SAM_CHECKPOINT_URLS:
        raise ValueError(
            f"unknown HQ-SAM model type '{model_type}'; choose one of {sorted(HQ_SAM_CHECKPOINT_URLS)} or 'tiny'"
        )
    if image_size != OFFICIAL_IMAGE_SIZE:
        raise ValueError(f"HQ-SAM '{model_type}' runs at image size {OFFICIAL_IMAGE_SIZE}, got {image_size}")
    if checkpoint is not None:  # fail before a slow build
        require_checkpoint(checkpoint, model_type, "hq_sam", HQ_SAM_CHECKPOINT_URLS[model_type])
    model = hq.sam_model_registry[model_type](checkpoint=None)
    if checkpoint is not None:
        # HQ-SAM's own loader is non-strict; shapes are still checked.
        load_checkpoint(model, checkpoint, model_type, "hq_sam", HQ_SAM_CHECKPOINT_URLS[model_type], strict=False)
    return model


def build_hq_sam_generator(model_type: str, checkpoint: str, image_size: int, **kw) -> HQSAMPointPrompted:
    model = build_hq_sam_model(model_type, None if model_type == "tiny" else checkpoint, image_size)
    return HQSAMPointPrompted(model, image_size, **_thresholds(kw))


# ---------------------------------------------------------------------------------------------- SAM 2
class SAM2PointPrompted(PointPromptedSAM):
    """SAM 2 / 2.1 image path (as `SAM2ImagePredictor`): the image is stretched to a square (no padding),
    `no_mem_embed` is added to the lowest-resolution feature, and the decoder also takes two
    higher-resolution feature maps (S/4 with d/8 channels, S/8 with d/4), packed here with pixel_unshuffle.
    Low-res logits are clamped to ±32 as the predictor does. 3 candidates per point."""

    preserve_aspect = False

    def _feature_sizes(self) -> List[Tuple[int, int]]:
        s = self.image_size
        return [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        model = self.sam
        backbone_out = model.forward_image(x)
        _, feats, _, _ = model._prepare_backbone_features(backbone_out)
        if model.directly_add_no_mem_embed:
            feats[-1] = feats[-1] + model.no_mem_embed
        sizes = self._feature_sizes()[-len(feats) :]
        maps = [f.permute(1, 2, 0).reshape(x.shape[0], -1, *hw) for f, hw in zip(feats, sizes)]  # HW,B,C -> B,C,H,W
        packed = [maps[-1]]
        for m in maps[:-1]:
            packed.append(F.pixel_unshuffle(m, m.shape[-1] // maps[-1].shape[-1]))
        return torch.cat(packed, dim=1)

    def _decode(
        self, embedding: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        model = self.sam
        d = model.sam_prompt_encoder.embed_dim
        high_res = None
        if model.use_high_res_features_in_sam:  # channels d/8 at 4x and d/4 at 2x the embedding grid
            s0, s1 = d // 8 * 16, d // 4 * 4
            high_res = [
                F.pixel_shuffle(embedding[:, d : d + s0], 4),
                F.pixel_shuffle(embedding[:, d + s0 : d + s0 + s1], 2),
            ]
        sparse, dense = model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        logits, iou, _, _ = model.sam_mask_decoder(
            image_embeddings=embedding[:, :d],
            image_pe=model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
            repeat_image=True,
            high_res_features=high_res,
        )
        return logits.clamp(-32.0, 32.0), iou


def build_sam2_model(model_type: str, checkpoint: Optional[str], image_size: int) -> nn.Module:
    """SAM 2.1 model ("hiera_t", "hiera_s", "hiera_b+", "hiera_l"; "tiny" = shrunk random Hiera, side % 128 == 0)."""
    _require("sam2", "sam2", " (SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2 skips the CUDA extension)")
    from sam2.build_sam import build_sam2

    if model_type == "tiny":
        if image_size % 128:
            raise ValueError(
                f"the tiny SAM2 test model needs image_size divisible by 128 (128, 256, ...), got {image_size}"
            )
        return build_sam2(
            SAM2_CONFIGS["hiera_t"],
            None,
            device="cpu",
            hydra_overrides_extra=[*_SAM2_TINY_OVERRIDES, f"++model.image_size={image_size}"],
            apply_postprocessing=False,
        )
    if model_type not in SAM2_CONFIGS:
        raise ValueError(f"unknown SAM2 model type '{model_type}'; choose one of {sorted(SAM2_CONFIGS)} or 'tiny'")
    if image_size != OFFICIAL_IMAGE_SIZE:
        raise ValueError(f"SAM2 '{model_type}' runs at image size {OFFICIAL_IMAGE_SIZE}, got {image_size}")
    if checkpoint is not None:  # fail before a slow build
        require_checkpoint(checkpoint, model_type, "sam2", SAM2_CHECKPOINT_URLS[model_type])
    # apply_postprocessing only changes single-mask outputs (dynamic multimask); we always decode 3 masks.
    model = build_sam2(SAM2_CONFIGS[model_type], None, device="cpu", apply_postprocessing=False)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, model_type, "sam2", SAM2_CHECKPOINT_URLS[model_type])
    return model


def build_sam2_generator(model_type: str, checkpoint: str, image_size: int, **kw) -> SAM2PointPrompted:
    model = build_sam2_model(model_type, None if model_type == "tiny" else checkpoint, image_size)
    # SAM2 normalises [0,1] images by ImageNet mean/std, identical to SAM's 0-255 constants.
    return SAM2PointPrompted(model, image_size, **_thresholds(kw))
