"""SAM's training losses (arXiv 2304.02643 App. A) and where to take them (Mask2Former's point sampling).

Pure functions on tensors; sam_pretraining.py applies them to the tiny SAM's outputs.
"""

from typing import Dict, Tuple

import torch
import torch.nn.functional as F

__all__ = ["sigmoid_focal_loss", "dice_loss", "mask_iou", "point_logits", "sample_loss_points", "sam_loss"]


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) averaged over the last dim (pixels or points): [...,N] -> [...].

    The form DETR/MaskFormer use for masks (facebookresearch/detectron2 fvcore sigmoid_focal_loss), which
    SAM's "focal and dice loss ... 20:1" follows.
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(-1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft dice loss 1 - (2|p∩t| + eps) / (|p| + |t| + eps) per mask: [...,N] -> [...]."""
    prob = logits.sigmoid()
    t = targets
    return 1 - (2 * (prob * t).sum(-1) + eps) / (prob.sum(-1) + t.sum(-1) + eps)


def mask_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of boolean masks [...,H,W] x [...,H,W] (broadcast) -> [...] (0 when both are empty)."""
    pred, target = torch.broadcast_tensors(pred, target)
    p, t = pred.flatten(-2).float(), target.flatten(-2).float()  # float sums: far faster than bool on CPU
    inter = (p * t).sum(-1)
    union = p.sum(-1) + t.sum(-1) - inter
    return inter / union.clamp(min=1)


def point_logits(
    low: torch.Tensor, points: torch.Tensor, input_size: Tuple[int, int], frame_size: Tuple[int, int]
) -> torch.Tensor:
    """Low-res logits read at points of the image frame, with `logits_to_out_size`'s geometry.

    low: [M,l_h,l_w] over the padded model frame (`frame_size`, the image in its top-left `input_size`);
    points: [M,N,2] normalised (x, y) of the image frame -> logits [M,N] (bilinear, border padding).
    At pixel centres ((j+0.5)/W, (i+0.5)/H) this equals `logits_to_out_size(...)[:, i, j]`.
    """
    scale = points.new_tensor([input_size[1] / frame_size[1], input_size[0] / frame_size[0]])
    grid = (points * scale * 2 - 1)[:, :, None, :]  # [M,N,1,2]
    out = F.grid_sample(low[:, None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[:, 0, :, 0]


def sample_loss_points(
    low: torch.Tensor,
    input_size: Tuple[int, int],
    frame_size: Tuple[int, int],
    num_points: int,
    generator: torch.Generator,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
) -> torch.Tensor:
    """Where to take each mask's loss: Mask2Former's uncertainty-based point sampling (PointRend), i.e.
    `importance_sample_ratio` of `num_points` among `oversample_ratio`·num_points uniform points with the
    smallest |logit| (the boundary), the rest uniform (facebookresearch/Mask2Former
    mask2former/modeling/criterion.py, get_uncertain_point_coords_with_randomness).

    low: [M,l_h,l_w] -> points [M,num_points,2] normalised (x, y) of the image frame (no gradient).
    Cheaper than a loss over every pixel by the ratio of pixels to points, which is what fits the tiny
    SAM's training into the demo's budget.
    """
    m = low.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    candidates = torch.rand(m, num_sampled, 2, generator=generator)
    with torch.no_grad():
        uncertainty = -point_logits(low.detach(), candidates, input_size, frame_size).abs()
    index = uncertainty.topk(num_uncertain, dim=1)[1]
    uncertain = candidates.gather(1, index[..., None].expand(-1, -1, 2))
    uniform = torch.rand(m, num_points - num_uncertain, 2, generator=generator)
    return torch.cat([uncertain, uniform], dim=1)


def sam_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    iou_pred: torch.Tensor,
    actual_iou: torch.Tensor,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    iou_weight: float = 1.0,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """SAM's loss for K candidate masks per prompt (arXiv 2304.02643 App. A "Losses").

    logits, targets: [P,K,N] mask logits and {0,1} targets (N pixels or sampled points per candidate);
    iou_pred, actual_iou: [P,K] predicted IoU and each candidate's actual IoU with its target.
    Mask loss = min over the K candidates of focal_weight·focal + dice_weight·dice ("we only backpropagate
    from the lowest loss"); IoU loss = MSE between iou_pred and actual_iou over all K candidates.
    Returns (scalar loss, {"mask", "iou" (detached scalars), "best" [P] index of the lowest-loss candidate}).
    """
    t = targets.float()
    per_candidate = focal_weight * sigmoid_focal_loss(logits, t) + dice_weight * dice_loss(logits, t)  # [P,K]
    best_loss, best = per_candidate.min(dim=1)
    iou_loss = F.mse_loss(iou_pred, actual_iou.to(iou_pred.dtype))
    loss = best_loss.mean() + iou_weight * iou_loss
    return loss, {"mask": best_loss.mean().detach(), "iou": iou_loss.detach(), "best": best}
