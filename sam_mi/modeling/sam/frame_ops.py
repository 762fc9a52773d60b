"""The point decoder's pure tensor steps (point_decoder.py's module docstring explains the choices): the frame
geometry (SAM's resize of the longest side, points into the model's input frame, low-res logits resampled into
the image frame), AMG's candidate filters, the choice of candidates per point, and `generate`'s argument checks.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from segment_anything.utils.amg import calculate_stability_score

__all__ = [
    "resize_longest_side_shape",
    "points_to_input_frame",
    "filter_candidates",
    "logits_to_out_size",
    "select_candidates",
    "ceil_div",
    "check_generate_args",
]


def resize_longest_side_shape(h: int, w: int, long_side: int) -> Tuple[int, int]:
    """Size of an h×w image resized so that its longest side is `long_side` (SAM's `get_preprocess_shape`).

    Each side is clamped to >= 1: SAM's formula rounds the short side of an extreme aspect ratio (e.g.
    10000×30 at 1024 -> 3.07 -> 3, but 100000×30 -> 0.3 -> 0) to zero, which no resize accepts."""
    if h < 1 or w < 1:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    scale = long_side * 1.0 / max(h, w)
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


def points_to_input_frame(
    points: torch.Tensor, image_size: Tuple[int, int], input_size: Tuple[int, int]
) -> torch.Tensor:
    """Normalised (x, y) points -> pixel coordinates in the model's input frame.

    Same arithmetic as AMG: scale to image pixels (x·W, y·H), then `ResizeLongestSide.apply_coords`
    (x·w_in/W, y·h_in/H), with input_size = (h_in, w_in) the resized (un-padded) image size.
    points: [N,2] in [0,1]  ->  [N,2] float pixels.
    """
    h, w = image_size
    h_in, w_in = input_size
    pix = points.float() * points.new_tensor([float(w), float(h)])
    return pix * pix.new_tensor([w_in / w, h_in / h])


def filter_candidates(
    logits: torch.Tensor,
    iou_pred: torch.Tensor,
    pred_iou_thresh: float,
    stability_score_thresh: float,
    stability_score_offset: float,
    mask_threshold: float = 0.0,
) -> torch.Tensor:
    """AMG's per-candidate filters. logits: [M,h,w] (cropped low-res), iou_pred: [M] -> keep: Bool[M].

    Keeps predicted IoU > pred_iou_thresh and stability >= stability_score_thresh (as AMG), and also drops
    masks that are empty after binarising at `mask_threshold` (AMG would keep them when the stability
    threshold is 0; an empty mask carries no region for SMAgg/DMI and would give a degenerate box).
    Stability is 0/0 = NaN when no pixel exceeds threshold-offset; NaN fails the test, as in AMG.
    """
    keep = iou_pred > pred_iou_thresh
    stability = calculate_stability_score(logits, mask_threshold, stability_score_offset)
    keep &= stability >= stability_score_thresh
    keep &= (logits > mask_threshold).flatten(1).any(dim=1)
    return keep


def logits_to_out_size(
    logits: torch.Tensor, input_size: Tuple[int, int], frame_size: Tuple[int, int], out_size: Tuple[int, int]
) -> torch.Tensor:
    """Resample low-res logits of the whole (padded) model frame into the image frame at `out_size`.

    logits: [M,l_h,l_w] covering the model's `frame_size` (e.g. 1024×1024) of which the image occupies the
    top-left `input_size`; returns logits [M,h_o,w_o]. Output pixel centre (i+0.5)/h_o of the image lies at
    (i+0.5)/h_o·h_in in the model frame; grid_sample(align_corners=False) with border padding gives the
    same bilinear convention as SAM's F.interpolate calls.
    """
    h_o, w_o = out_size
    dev = logits.device
    ys = (torch.arange(h_o, device=dev, dtype=torch.float32) + 0.5) / h_o * input_size[0] / frame_size[0]
    xs = (torch.arange(w_o, device=dev, dtype=torch.float32) + 0.5) / w_o * input_size[1] / frame_size[1]
    gy, gx = torch.meshgrid(ys * 2 - 1, xs * 2 - 1, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1)[None]  # [1,h_o,w_o,2] (x, y)
    out = F.grid_sample(logits[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0]


def select_candidates(
    logits: torch.Tensor, iou_pred: torch.Tensor, masks_per_point: str
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Keep SAM's outputs per prompt according to `masks_per_point` (module docstring).

    logits [n,K,l_h,l_w], iou_pred [n,K] from a decoder run with `multimask_output` = (mode != "single")
    -> ([n·K',l_h,l_w], [n·K']): K' = K for "amg"; for "best" the candidate with the highest predicted IoU
    (first on ties, as argmax); "single" expects the one single-output mask.
    """
    if masks_per_point == "best" and logits.shape[1] > 1:
        idx = iou_pred.argmax(dim=1)
        rows = torch.arange(logits.shape[0], device=logits.device)
        logits, iou_pred = logits[rows, idx][:, None], iou_pred[rows, idx][:, None]
    elif masks_per_point == "single" and logits.shape[1] != 1:
        raise ValueError(
            f"masks_per_point='single' needs the decoder's single-output mask, got {logits.shape[1]} per prompt: "
            "this SAM variant's _decode ignores `multimask_output`"
        )
    return logits.flatten(0, 1), iou_pred.flatten(0, 1)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def check_generate_args(
    embedding: torch.Tensor, points: torch.Tensor, out_size: Tuple[int, int]
) -> Tuple[int, int, Tuple[torch.Tensor, torch.Tensor]]:
    """Validate `generate`'s inputs; return the output size and the empty result (no mask, no score)."""
    if embedding.dim() != 3:
        raise ValueError(f"generate takes one image's embedding [C,h,w], got {tuple(embedding.shape)}")
    if points.dim() != 2 or points.shape[-1] != 2:
        raise ValueError(f"points must be [N,2] (x, y) in [0,1], got {tuple(points.shape)}")
    h_o, w_o = int(out_size[0]), int(out_size[1])
    dev = embedding.device
    return h_o, w_o, (torch.zeros(0, h_o, w_o, dtype=torch.bool, device=dev), torch.zeros(0, device=dev))
