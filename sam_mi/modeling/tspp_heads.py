"""The paper's TSPP network: cost maps S [B, T, h, w] -> (sampling probabilities [B, G, G], mask logits).

:class:`PaperTSPPHead` is the network of arXiv 2511.20027 Sec. 3.2 / Fig. 3c: "a lightweight MLP layer and
attention block enrich spatial-level and class-level contextual information in S, yielding S_en", then
"two linear projection heads" give M^text and the probabilities.  The earlier head,
:class:`~sam_mi.modeling.tspp.TSPPHead`, whose probability branch is a stack of 3x3 convolutions over
hand-made class-pooled inputs (class-weighted mean, max, log expected area), stays available for comparison
and for checkpoints trained with it.  Both have the same forward contract and constructor arguments, so
either can be the prompter's head (``TSPP_HEAD_REGISTRY``, key ``MODEL.SAM_MI.TSPP.HEAD_NAME``).
"""
from typing import Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from .tspp import ClassLinearAttention

__all__ = ["PaperTSPPHead"]


class PaperTSPPHead(nn.Module):
    """TSPP as the paper draws it (Sec. 3.2, Fig. 3c). The paper gives no widths; ours are in the Args.

    1. MLP: every cost value is embedded (1 -> C -> C, GELU), per class and pixel: [B, T, h, w, C].
    2. Attention block -> S_en, all pre-norm and residual:
       spatial level -- a depth-wise 3x3 convolution as positional encoding (linear attention alone is
       blind to position), then multi-head linear attention over the h*w pixels of each class map;
       class level -- multi-head linear attention over the T classes at each pixel; then an FFN (C -> 2C -> C).
       Linear attention (elu + 1 features) keeps the cost linear in T and h*w, so 847-class vocabularies
       and five sliding-window views fit, and its normalisation makes the head indifferent to T.
    3. Two linear projection heads on S_en:
       M^text: Linear(C -> 1) per class and pixel -> mask logits [B, T, h, w] (argmax = M^text);
       probabilities: Linear(C -> 1) per class and pixel gives each class's point density, read at every
       pixel for the class the pixel belongs to, i.e. averaged over classes with the (detached) softmax of
       the mask logits. Eq. 3 spreads a class's P_k points over its own mask, so the density is the one of
       the pixel's class; detaching keeps L_mse from reshaping M^text (each head has its own loss). As the
       projection is linear it is applied after the class average (same value, T times cheaper).
    The [B, 1, h, w] map is resized bilinearly (align_corners=False: pixel centres map to cell centres,
    like SAM's point grid) to G x G (24 x 24 -> 32 x 32 for ViT-B/16 @ 384), then softplus: non-negative
    and not capped at 1, since Eq. 3 targets exceed 1 where a small mask's P_k points crowd its skeleton.
    The caller detaches CLIP image features so these losses never reach CLIP's visual encoder (Sec. 3.2).

    Args:
        hidden_dim: C, the embedding width (32: the cost is one number per class and pixel).
        grid_size: G of SAM's point grid (32, Sec. 3.2).
        num_heads: heads of both linear attentions (C must be divisible by it).
    """

    def __init__(self, hidden_dim: int = 32, grid_size: int = 32, num_heads: int = 4) -> None:
        super().__init__()
        c = hidden_dim
        self.grid_size = grid_size
        self.embed = nn.Sequential(nn.Linear(1, c), nn.GELU(), nn.Linear(c, c))
        self.pos = nn.Conv2d(c, c, kernel_size=3, padding=1, groups=c)
        self.norm_spatial = nn.LayerNorm(c)
        self.spatial_attn = ClassLinearAttention(c, num_heads)  # attends over its token axis: here pixels
        self.norm_class = nn.LayerNorm(c)
        self.class_attn = ClassLinearAttention(c, num_heads)
        self.norm_ffn = nn.LayerNorm(c)
        self.ffn = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))
        self.mask_proj = nn.Linear(c, 1)
        self.prob_proj = nn.Linear(c, 1)

    def enrich(self, cost: Tensor) -> Tensor:
        """S [B, T, h, w] -> S_en [B, h, w, T, C]."""
        b, t, h, w = cost.shape
        x = self.embed(cost.unsqueeze(-1))  # [B, T, h, w, C]
        c = x.shape[-1]
        maps = x.reshape(b * t, h, w, c)
        maps = maps + self.pos(maps.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        pixels = maps.reshape(b * t, h * w, c)
        pixels = pixels + self.spatial_attn(self.norm_spatial(pixels))  # spatial level, per class
        classes = pixels.reshape(b, t, h * w, c).transpose(1, 2).reshape(b * h * w, t, c)
        classes = classes + self.class_attn(self.norm_class(classes))  # class level, per pixel
        classes = classes + self.ffn(self.norm_ffn(classes))
        return classes.reshape(b, h, w, t, c)

    def forward(self, cost: Tensor) -> Tuple[Tensor, Tensor]:
        """cost: Tensor[B, T, h, w] (cosine similarities) -> (prob [B, G, G] >= 0, mask_logits [B, T, h, w])."""
        if cost.dim() != 4 or cost.shape[1] == 0:
            raise ValueError(f"cost must be [B, T, h, w] with T >= 1, got {tuple(cost.shape)}")
        s_en = self.enrich(cost)
        mask_logits = self.mask_proj(s_en).squeeze(-1).permute(0, 3, 1, 2)  # [B, T, h, w]
        weights = mask_logits.detach().softmax(dim=1).permute(0, 2, 3, 1).unsqueeze(-1)  # [B, h, w, T, 1]
        pixel_class = (s_en * weights).sum(dim=3)  # [B, h, w, C]: S_en of the pixel's class
        prob = self.prob_proj(pixel_class).permute(0, 3, 1, 2)  # [B, 1, h, w]
        size = (self.grid_size, self.grid_size)
        prob = F.softplus(F.interpolate(prob, size=size, mode="bilinear", align_corners=False))
        return prob.squeeze(1), mask_logits

