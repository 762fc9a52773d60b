"""Boundary IoU against a loop reference written from Cheng et al.'s definition (distance to the contour)."""
import numpy as np
import torch

from sam_mi.evaluation.boundary import BoundaryIoU, boundary_counts, inner_boundary


def reference_band(mask: np.ndarray, d: int) -> np.ndarray:
    """Pixels of ``mask`` with a non-mask pixel (or the outside of the image) within Chebyshev distance d."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    for y in range(h):
        for x in range(w):
            if not mask[y, x]:
                continue
            y0, y1, x0, x1 = y - d, y + d + 1, x - d, x + d + 1
            window_inside = y0 >= 0 and x0 >= 0 and y1 <= h and x1 <= w
            out[y, x] = (not window_inside) or (not mask[y0:y1, x0:x1].all())
    return out


def test_band_matches_the_loop_reference():
    rng = np.random.default_rng(0)
    for d in (1, 2, 3):
        mask = rng.random((20, 24)) > 0.35
        mask[5:15, 6:18] = True
        ours = inner_boundary(torch.as_tensor(mask)[None], d)[0].numpy()
        assert (ours == reference_band(mask, d)).all(), d


def test_perfect_prediction_scores_100_and_a_shifted_edge_scores_less():
    gt = torch.zeros(40, 40, dtype=torch.long)
    gt[:, 20:] = 1
    metric = BoundaryIoU(num_classes=2, d=2)
    metric.update(gt.clone(), gt)
    assert metric.compute()["BIoU"] == 100.0
    shifted = torch.zeros_like(gt)
    shifted[:, 23:] = 1  # the edge 3 px off: region IoU stays high, boundary IoU drops
    metric = BoundaryIoU(num_classes=2, d=2)
    metric.update(shifted, gt)
    region_iou = ((shifted == 1) & (gt == 1)).sum() / ((shifted == 1) | (gt == 1)).sum()
    assert metric.compute()["BIoU"] < 50.0 < 100 * float(region_iou)


def test_ignored_pixels_do_not_count():
    gt = torch.zeros(30, 30, dtype=torch.long)
    gt[:, 15:] = 1
    gt[:, :5] = 255
    pred = gt.clone()
    pred[:, :5] = 1  # wrong only where the label is ignored
    inter, union = boundary_counts(pred, gt, 2, d=2)
    assert torch.equal(inter, union)
