"""Decoupled Mask Injection (DMI), Sec. 3.4 of SAM-MI (Eq. 8-12).

Low-frequency injection (Eq. 8-10) enriches CLIP's last-layer features (the aggregator's appearance
guidance, 24 x 24) with intra-mask context (mask pooling) and inter-mask context (cross-attention to the
pooled mask embeddings). High-frequency injection (Eq. 11-12) adds SAM's mask edges to the decoder
guidance maps (48 x 48, 96 x 96). Masks are the SMAgg output, resized by the caller to each feature
resolution and batched with :func:`pad_masks`. Images with no (non-empty) mask pass through unchanged.
"""
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check(features: Tensor, masks: Tensor) -> None:
    if features.dim() != 4 or masks.dim() != 4:
        raise ValueError(f"need features [B,D,h,w] and masks [B,N,h,w], got {tuple(features.shape)}, "
                         f"{tuple(masks.shape)}")
    if masks.dtype != torch.bool:
        raise ValueError(f"masks must be bool, got {masks.dtype}")
    if masks.shape[0] != features.shape[0] or masks.shape[2:] != features.shape[2:]:
        raise ValueError(f"masks {tuple(masks.shape)} must match features {tuple(features.shape)} in batch and "
                         "spatial size; resize masks to the feature resolution (nearest) first")


def pad_masks(masks: List[Tensor]) -> Tensor:
    """Stack per-image masks Bool[N_i, h, w] into Bool[B, N_max, h, w], N_max = max(1, max N_i); padded rows
    are empty (and so ignored by the injections)."""
    if len(masks) == 0:
        raise ValueError("pad_masks needs at least one image's masks")
    h, w = masks[0].shape[-2:]
    if any(m.dim() != 3 or m.shape[-2:] != (h, w) or m.dtype != torch.bool for m in masks):
        raise ValueError("every entry must be a bool tensor [N_i, h, w] with one common h, w")
    n_max = max(1, max(m.shape[0] for m in masks))
    out = masks[0].new_zeros((len(masks), n_max, h, w))
    for b, m in enumerate(masks):  # loop over images, not masks or pixels
        out[b, : m.shape[0]] = m
    return out


def mask_pooling(features: Tensor, masks: Tensor) -> Tensor:
    """Eq. 8: mean feature inside each mask; empty masks give zeros.

    features: [B, D, h, w]; masks: Bool[B, N, h, w] -> [B, N, D].
    """
    _check(features, masks)
    m = masks.to(features.dtype)
    area = m.sum(dim=(2, 3)).clamp_min(1.0)
    return torch.einsum("bnhw,bdhw->bnd", m, features) / area.unsqueeze(-1)


def intra_mask_context(features: Tensor, masks: Tensor) -> Tuple[Tensor, Tensor]:
    """Eq. 8-9: F_intra(p) = F(p) + sum_k [p in M_k] pooled_k (overlapping masks add up, as Eq. 9 reads).

    features: [B, D, h, w]; masks: Bool[B, N, h, w] -> (F_intra [B, D, h, w], pooled [B, N, D]).
    """
    pooled = mask_pooling(features, masks)
    f_intra = features + torch.einsum("bnhw,bnd->bdhw", masks.to(features.dtype), pooled)
    return f_intra, pooled


class LowFrequencyInjection(nn.Module):
    """Eq. 8-10: F_mcr = F_inter + F_intra, F_inter = Attention(Q = F_intra, KV = pooled mask embeddings).

    A pre-norm nn.MultiheadAttention (LayerNorm on queries and on keys/values, with its output projection)
    and no FFN: the paper only names the cross-attention. Empty / padded masks are excluded by the key
    padding mask. An image with no valid mask gets its input back unchanged (its F_intra equals F and it
    has nothing to attend to; we also avoid the all-masked softmax, which would give NaN).
    """

    def __init__(self, dim: int, num_heads: int = 8) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(self, features: Tensor, masks: Tensor) -> Tensor:
        """features: [B, D, h, w]; masks: Bool[B, N, h, w] -> F_mcr [B, D, h, w]."""
        _check(features, masks)
        valid = masks.flatten(2).any(dim=2)  # [B, N]
        has_mask = valid.any(dim=1)  # [B]
        if not bool(has_mask.any()):
            return features
        b, d, h, w = features.shape
        f_intra, pooled = intra_mask_context(features, masks)
        q = f_intra.flatten(2).transpose(1, 2)  # [B, hw, D]
        kv = self.norm_kv(pooled)
        # images without masks attend to their (zero) rows instead of an all -inf softmax; reset below
        pad = ~valid & has_mask.unsqueeze(1)
        f_inter, _ = self.attn(self.norm_q(q), kv, kv, key_padding_mask=pad, need_weights=False)
        f_mcr = (f_inter + q).transpose(1, 2).reshape(b, d, h, w)
        return torch.where(has_mask.view(b, 1, 1, 1), f_mcr, features)


class HighFrequencyInjection(nn.Module):
    """Eq. 11-12: M_emd = concat[F_h, proj(M)];  F_h <- F_h + gamma * DWConv(MLP(M_emd)), gamma init 1.

    How a variable number of binary masks becomes a fixed-width map is not in the paper. Our choice: each
    pixel's descriptor is the mean, over the masks covering it, of those masks' pooled guidance features
    (Eq. 8 on F_h at this resolution), concatenated with log(1 + coverage count); ``proj`` (1x1-conv MLP)
    embeds it. The result is piecewise constant with jumps exactly at SAM's mask edges, i.e. it carries
    the masks' high-frequency content. Pixels covered by no mask get a zero embedding. MLP = 1x1 convs
    (C + hidden -> hidden -> C), DWConv = depth-wise 3x3, gamma is per channel. Images with no mask are
    returned unchanged (the delta is gated off).
    """

    def __init__(self, guidance_dim: int, hidden_dim: int = 64) -> None:
        super().__init__()
        c = guidance_dim
        self.proj = nn.Sequential(nn.Conv2d(c + 1, hidden_dim, 1), nn.GELU(), nn.Conv2d(hidden_dim, hidden_dim, 1))
        self.mlp = nn.Sequential(nn.Conv2d(c + hidden_dim, hidden_dim, 1), nn.GELU(), nn.Conv2d(hidden_dim, c, 1))
        self.dwconv = nn.Conv2d(c, c, kernel_size=3, padding=1, groups=c)
        self.gamma = nn.Parameter(torch.ones(c))

    def mask_embedding(self, guidance: Tensor, masks: Tensor) -> Tensor:
        """proj(M) of Eq. 11: [B, C, H, W], Bool[B, N, H, W] -> [B, hidden, H, W]."""
        m = masks.to(guidance.dtype)
        pooled = mask_pooling(guidance, masks)  # [B, N, C]
        cover = m.sum(dim=1, keepdim=True)  # [B, 1, H, W]
        mean = torch.einsum("bnhw,bnc->bchw", m, pooled) / cover.clamp_min(1.0)
        emb = self.proj(torch.cat([mean, torch.log1p(cover)], dim=1))
        return emb * (cover > 0).to(emb.dtype)

    def forward(self, guidance: Tensor, masks: Tensor) -> Tensor:
        """guidance: [B, C, H, W]; masks: Bool[B, N, H, W] -> [B, C, H, W]."""
        _check(guidance, masks)
        has_mask = masks.flatten(1).any(dim=1)  # [B]
        if not bool(has_mask.any()):
            return guidance
        m_emd = torch.cat([guidance, self.mask_embedding(guidance, masks)], dim=1)  # Eq. 11
        delta = self.dwconv(self.mlp(m_emd))
        out = guidance + self.gamma.view(1, -1, 1, 1) * delta  # Eq. 12
        return torch.where(has_mask.view(-1, 1, 1, 1), out, guidance)


__all__ = [
    "pad_masks",
    "mask_pooling",
    "intra_mask_context",
    "LowFrequencyInjection",
    "HighFrequencyInjection",
]


def resize_masks(masks: Tensor, size: Tuple[int, int]) -> Tensor:
    """Bool[B, N, H, W] -> Bool[B, N, h, w]: a pixel of the coarser grid belongs to a mask when at least half
    of the area it covers does (area interpolation), so a mask thinner than a cell vanishes instead of
    spreading over its neighbours."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    b, n = masks.shape[:2]
    area = F.interpolate(masks.flatten(0, 1)[:, None].float(), size=size, mode="area")
    return (area[:, 0] >= 0.5).view(b, n, *size)
