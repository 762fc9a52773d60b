"""HQ-SAM (paper Table 9: "HQ-SAM-H") behind `PointPromptedSAM`, from the optional `segment-anything-hq` package.

HQ-SAM's decoder needs an early ViT feature besides SAM's embedding; it is packed into the single embedding
tensor `encode` returns (channels concatenated at the embedding grid), so the mask-generator contract
`encode -> Tensor[B,C,h',w']`, `generate(embedding[C,h',w'], ...)` holds; callers treat C as opaque.
"""
from typing import Optional, Tuple

import torch
from detectron2.config import configurable
from torch import nn

from .fast_attention import apply_sam_fast_path
from .checkpoint import OFFICIAL_IMAGE_SIZE, load_checkpoint, optional_import, require_checkpoint
from .point_decoder import PointPromptedSAM
from .registry import mask_generator_args, register_mask_generator
from .sam import build_tiny_sam

HQ_SAM_CHECKPOINT_URLS = {
    t: f"https://huggingface.co/lkeab/hq-sam/resolve/main/sam_hq_{t}.pth"
    for t in ("vit_h", "vit_l", "vit_b", "vit_tiny")
}


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
            multimask_output=self.multimask_output,  # False in "single" mode
            hq_token_only=self.hq_token_only,
            interm_embeddings=[vit],
        )


def build_hq_sam_model(model_type: str, checkpoint: Optional[str], image_size: int) -> nn.Module:
    """segment_anything_hq `Sam` ("vit_h", "vit_l", "vit_b", "vit_tiny"; "tiny" = random test model).

    checkpoint=None builds random weights (parameter counts only); "" or a missing path raises."""
    hq = optional_import("segment_anything_hq", "segment-anything-hq", "==0.3")
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


@register_mask_generator("hq_sam")
@configurable(from_config=mask_generator_args)
def build_hq_sam_generator(model_type: str, checkpoint: str = "", image_size: int = OFFICIAL_IMAGE_SIZE,
                           *, random_init: bool = False, sdpa: bool = True, **decoding) -> HQSAMPointPrompted:
    """HQ-SAM inside SAM's point-prompted decoding; "tiny" and ``random_init`` build random weights."""
    random = model_type == "tiny" or random_init
    model = build_hq_sam_model(model_type, None if random else checkpoint, image_size)
    apply_sam_fast_path(model, sdpa=sdpa)
    return HQSAMPointPrompted(model, image_size, **decoding)
