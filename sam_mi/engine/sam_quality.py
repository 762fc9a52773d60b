"""Quality of a (tiny) SAM as SAM-MI uses it: single-point masks and masks surviving AMG's filters.

- `point_prompt_quality`: one positive point drawn uniformly inside every region of every image (seeded);
  IoU with the region of the best of the 3 multimask candidates (an oracle choice, SAM's "oracle" metric,
  arXiv 2304.02643 Sec. 7.1) and of the candidate with the highest predicted IoU (what AMG keeps).
- `amg_masks_per_image`: masks per image surviving SAM's automatic-mask-generation filters (predicted IoU,
  stability score, box NMS) for a 32×32 point grid, through `PointPromptedSAM.generate`, i.e. the code path
  SAM-MI runs; `amg_threshold_sweep` repeats it for laxer thresholds (a small model's IoU head may never
  reach AMG's 0.88).
"""

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from segment_anything.utils.amg import build_point_grid
from torch import nn

from sam_mi.modeling.sam.point_decoder import PointPromptedSAM, logits_to_out_size, points_to_input_frame

from .sam_losses import mask_iou
from .sam_pretraining import decode_points
from .sam_regions import RegionImage, pixel_centres

__all__ = ["AMG_DEFAULTS", "point_prompt_quality", "amg_masks_per_image", "amg_threshold_sweep"]

#: segment-anything SamAutomaticMaskGenerator defaults: pred_iou_thresh, stability_score_thresh, box_nms_thresh.
AMG_DEFAULTS = (0.88, 0.95, 0.7)


def _one_point_per_region(sample: RegionImage, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """One pixel centre drawn uniformly inside each region: (points [R,2] normalised (x, y), ids [R] = 1..R)."""
    h, w = sample.regions.shape
    ids = torch.arange(1, sample.num_regions + 1)
    inside = sample.regions.flatten()[None, :] == ids[:, None]
    noise = torch.rand(inside.shape, generator=generator)
    index = torch.where(inside, noise, -1.0).argmax(dim=1)
    return pixel_centres(index, h, w), ids


@torch.no_grad()
def point_prompt_quality(
    sam: nn.Module, samples: Sequence[RegionImage], image_size: int, seed: int = 0, swap_xy: bool = False
) -> Dict[str, float]:
    """Single-point quality on `samples`: {"best_iou", "top_score_iou", "mean_pred_iou", "num_prompts"}.

    best_iou: mean over prompts of the best candidate's IoU with the prompted region; top_score_iou: of the
    candidate with the highest predicted IoU; mean_pred_iou: the mean of that highest prediction.
    `swap_xy` feeds (y, x) instead of (x, y) (a diagnostic: a transposed prompt must be caught).
    """
    frame = PointPromptedSAM(sam, image_size)
    generator = torch.Generator().manual_seed(seed)
    best, top, pred = [], [], []
    for sample in samples:
        h, w = sample.regions.shape
        h_in, w_in = frame.input_size(h, w)
        embedding = frame.encode(sample.image[None].float())
        points, ids = _one_point_per_region(sample, generator)
        if swap_xy:
            points = points.flip(-1)
        coords = points_to_input_frame(points, (h, w), (h_in, w_in))[:, None]
        labels = torch.ones(coords.shape[:2], dtype=torch.int)
        low, iou = decode_points(sam, embedding, coords, labels, multimask=True)
        p, k = low.shape[:2]
        masks = logits_to_out_size(low.flatten(0, 1), (h_in, w_in), (image_size, image_size), (h, w)) > 0
        target = sample.regions[None] == ids[:, None, None]
        actual = mask_iou(masks.view(p, k, h, w), target[:, None])  # [R,K]
        choice = iou.argmax(dim=1)
        best.append(actual.max(dim=1)[0])
        top.append(actual[torch.arange(p), choice])
        pred.append(iou.max(dim=1)[0])
    return {
        "best_iou": float(torch.cat(best).mean()),
        "top_score_iou": float(torch.cat(top).mean()),
        "mean_pred_iou": float(torch.cat(pred).mean()),
        "num_prompts": int(sum(t.numel() for t in best)),
    }


@torch.no_grad()
def amg_masks_per_image(
    sam: nn.Module,
    samples: Sequence[RegionImage],
    image_size: int,
    pred_iou_thresh: float = AMG_DEFAULTS[0],
    stability_score_thresh: float = AMG_DEFAULTS[1],
    box_nms_thresh: float = AMG_DEFAULTS[2],
    points_per_side: int = 32,
) -> float:
    """Mean number of masks per image that `PointPromptedSAM.generate` keeps for AMG's point grid."""
    generator = PointPromptedSAM(
        sam,
        image_size,
        points_per_batch=256,
        pred_iou_thresh=pred_iou_thresh,
        stability_score_thresh=stability_score_thresh,
        box_nms_thresh=box_nms_thresh,
    )
    grid = torch.from_numpy(build_point_grid(points_per_side)).float()  # AMG's grid, (x, y) in [0,1]
    counts = []
    for sample in samples:
        size = tuple(sample.regions.shape)
        embedding = generator.encode(sample.image[None].float())[0]
        masks, _ = generator.generate(embedding, grid, size, size)
        counts.append(masks.shape[0])
    return float(np.mean(counts)) if counts else 0.0


def amg_threshold_sweep(
    sam: nn.Module,
    samples: Sequence[RegionImage],
    image_size: int,
    thresholds: Sequence[Tuple[float, float]] = ((0.88, 0.95), (0.8, 0.9), (0.7, 0.85), (0.5, 0.8), (0.0, 0.0)),
) -> List[Dict[str, float]]:
    """`amg_masks_per_image` for each (pred_iou_thresh, stability_score_thresh), box NMS at AMG's 0.7."""
    return [
        {
            "pred_iou_thresh": a,
            "stability_score_thresh": b,
            "masks_per_image": amg_masks_per_image(sam, samples, image_size, a, b),
        }
        for a, b in thresholds
    ]
