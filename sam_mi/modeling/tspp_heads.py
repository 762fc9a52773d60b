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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .tspp_context import ClassLinearAttention, class_context_in_chunks

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
        class_chunk: classes processed at a time (tspp_context.py: the same result, a fraction of the memory
            on large vocabularies); 0 = all at once.
    """

    def __init__(self, hidden_dim: int = 32, grid_size: int = 32, num_heads: int = 4, class_chunk: int = 0) -> None:
        super().__init__()
        c = hidden_dim
        self.grid_size = grid_size
        self.class_chunk = class_chunk
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

    def _per_class(self, cost: Tensor) -> Tensor:
        """MLP embedding and spatial-level context of each class map: [B, t, h, w] -> [B, h*w, t, C]."""
        b, t, h, w = cost.shape
        x = self.embed(cost.unsqueeze(-1))  # [B, t, h, w, C]
        c = x.shape[-1]
        maps = x.reshape(b * t, h, w, c)
        maps = maps + self.pos(maps.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        pixels = maps.reshape(b * t, h * w, c)
        pixels = pixels + self.spatial_attn(self.norm_spatial(pixels))  # spatial level, per class
        return pixels.reshape(b, t, h * w, c).transpose(1, 2)

    def _enrich_chunks(self, cost: Tensor):
        """S_en of each class chunk: (slices, [B, h*w, t_i, C] each); class level per pixel, then the FFN."""
        return class_context_in_chunks(
            cost, self.class_chunk, self._per_class, self.norm_class, self.class_attn, self.norm_ffn, self.ffn
        )

    def enrich(self, cost: Tensor) -> Tensor:
        """S [B, T, h, w] -> S_en [B, h, w, T, C]."""
        b, _, h, w = cost.shape
        s_en = torch.cat(self._enrich_chunks(cost)[1], dim=2)
        return s_en.view(b, h, w, *s_en.shape[2:])

    def forward(self, cost: Tensor) -> Tuple[Tensor, Tensor]:
        """cost: Tensor[B, T, h, w] (cosine similarities) -> (prob [B, G, G] >= 0, mask_logits [B, T, h, w])."""
        if cost.dim() != 4 or cost.shape[1] == 0:
            raise ValueError(f"cost must be [B, T, h, w] with T >= 1, got {tuple(cost.shape)}")
        b, t, h, w = cost.shape
        slices, s_en = self._enrich_chunks(cost)
        mask_logits = torch.cat([self.mask_proj(x).squeeze(-1) for x in s_en], dim=2)  # [B, h*w, T]
        weights = mask_logits.detach().softmax(dim=2)  # [B, h*w, T]
        # S_en of the pixel's class, summed chunk by chunk: [B, h*w, C]
        pixel_class = sum((x * weights[:, :, s, None]).sum(dim=2) for s, x in zip(slices, s_en))
        prob = self.prob_proj(pixel_class).transpose(1, 2).reshape(b, 1, h, w)  # [B, 1, h, w]
        mask_logits = mask_logits.transpose(1, 2).reshape(b, t, h, w)
        size = (self.grid_size, self.grid_size)
        prob = F.softplus(F.interpolate(prob, size=size, mode="bilinear", align_corners=False))
        return prob.squeeze(1), mask_logits
