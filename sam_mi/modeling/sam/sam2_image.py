"""SAM 2.1 (paper Table 9: "SAM2-L") image path behind `PointPromptedSAM`, from the optional `sam2` package.

The decoder also takes two higher-resolution feature maps; they are packed losslessly into the single
embedding tensor `encode` returns (pixel_unshuffle to the embedding grid), so the mask-generator contract
holds; callers treat the embedding as opaque. Installed Python-only (SAM2_BUILD_CUDA=0), no compilation.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from .checkpoint import OFFICIAL_IMAGE_SIZE, load_checkpoint, optional_import, require_checkpoint
from .point_decoder import PointPromptedSAM
from .registry import mask_generator_args, register_mask_generator

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
            multimask_output=self.multimask_output,  # False in "single" mode
            repeat_image=True,
            high_res_features=high_res,
        )
        return logits.clamp(-32.0, 32.0), iou


def build_sam2_model(model_type: str, checkpoint: Optional[str], image_size: int) -> nn.Module:
    """SAM 2.1 model ("hiera_t", "hiera_s", "hiera_b+", "hiera_l"; "tiny" = shrunk random Hiera, side % 128 == 0)."""
    optional_import("sam2", "sam2", " (SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2 skips the CUDA extension)")
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


@register_mask_generator("sam2")
@configurable(from_config=mask_generator_args)
def build_sam2_generator(model_type: str, checkpoint: str = "", image_size: int = OFFICIAL_IMAGE_SIZE,
                         *, random_init: bool = False, sdpa: bool = True, **decoding) -> SAM2PointPrompted:
    """SAM 2.1 inside SAM's point-prompted decoding; "tiny" and ``random_init`` build random weights.
    ``sdpa`` has no effect: SAM 2's Hiera attention already runs through scaled_dot_product_attention."""
    random = model_type == "tiny" or random_init
    model = build_sam2_model(model_type, None if random else checkpoint, image_size)
    # SAM2 normalises [0,1] images by ImageNet mean/std, identical to SAM's 0-255 constants.
    return SAM2PointPrompted(model, image_size, **decoding)
