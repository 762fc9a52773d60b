"""Shallow Mask Aggregation (SMAgg), Sec. 3.3 of SAM-MI (Eq. 6-7).

SAM over-segments: one object comes back as several partial masks. SMAgg merges the SAM masks that
mostly fall inside the same coarse text mask M^text (one-hot argmax of TSPP's mask logits) into one mask
per class, and keeps every other SAM mask as it is.
"""
import torch
from torch import Tensor

_EPS = 1e-6  # epsilon of Eq. 6


def matching_scores(sam_masks: Tensor, text_masks: Tensor) -> Tensor:
    """Eq. 6: O(i, k) = |M_i^sam n M_k^text| / (|M_i^sam| + eps), as one matmul.

    Args:
        sam_masks: Bool[N_s, H, W]; text_masks: Bool[K, H, W].
    Returns:
        Tensor[N_s, K] float32 in [0, 1].
    """
    sam = sam_masks.flatten(1).float()
    text = text_masks.flatten(1).float()
    return (sam @ text.t()) / (sam.sum(dim=1, keepdim=True) + _EPS)


def shallow_mask_aggregation(sam_masks: Tensor, text_masks: Tensor, alpha_sma: float = 0.5) -> Tensor:
    """Merge over-segmented SAM masks class by class (Eq. 6-7).

    Per class k, M_k = union of the SAM masks with O(i, k) > alpha_sma (Eq. 7); classes that collect no
    mask produce nothing. SAM masks that join no class are kept individually (the paper's "later merged
    into the output"). Output order: aggregated masks in class order, then the leftover SAM masks in their
    input order.

    Choices (the paper is silent):
      * Empty SAM masks are dropped: they carry no information and O = 0 for them anyway.
      * Each SAM mask joins at most one class: among the classes with O(i, k) > alpha_sma, the one with
        the highest score (ties -> lowest class index). When the text masks are disjoint (M^text is a
        one-hot argmax, so they partition the image) sum_k O(i, k) <= 1, so for alpha_sma >= 0.5 at most
        one class can pass the threshold and this is exactly Eq. 7. For alpha_sma < 0.5 (Fig. 8's 0.3 /
        0.4) Eq. 7 read literally would copy one SAM mask into two class masks, duplicating its pixels in
        two injected masks; the best-class rule avoids that and keeps the paper's N_m <= N_s.

    Args:
        sam_masks: Bool[N_s, H, W]; text_masks: Bool[K, H, W] at the same resolution (resize before).
        alpha_sma: aggregation threshold in [0, 1).
    Returns:
        Bool[N_m, H, W], N_m <= N_s.
    """
    if sam_masks.dtype != torch.bool or text_masks.dtype != torch.bool:
        raise ValueError("sam_masks and text_masks must be bool tensors")
    if sam_masks.dim() != 3 or text_masks.dim() != 3 or sam_masks.shape[1:] != text_masks.shape[1:]:
        raise ValueError(f"need sam_masks [N_s,H,W] and text_masks [K,H,W] at one resolution, got "
                         f"{tuple(sam_masks.shape)} and {tuple(text_masks.shape)}; resize text masks first")
    sam_masks = sam_masks[sam_masks.flatten(1).any(dim=1)]
    n_s, k = sam_masks.shape[0], text_masks.shape[0]
    if n_s == 0 or k == 0:
        return sam_masks.clone()
    scores = matching_scores(sam_masks, text_masks)  # [N_s, K]
    passed = scores > alpha_sma
    best = scores.masked_fill(~passed, -1.0).argmax(dim=1)  # first maximum on ties
    joined = passed.any(dim=1)
    assign = torch.zeros_like(passed)
    assign[joined, best[joined]] = True  # [N_s, K], at most one True per row
    merged = (assign.t().float() @ sam_masks.flatten(1).float()) > 0  # union per class, Eq. 7
    merged = merged[assign.any(dim=0)].view(-1, *sam_masks.shape[1:])
    return torch.cat([merged, sam_masks[~joined]], dim=0)
