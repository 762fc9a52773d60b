"""Boundary IoU (Cheng et al., "Boundary IoU: Improving Object-Centric Image Segmentation Evaluation", CVPR
2021) for semantic segmentation: how well region edges are drawn, which is where SAM's masks should help
(arXiv 2511.20027 Sec. 1: CLIP's 1/16 features are coarse at boundaries).

For a class c with ground-truth mask G and predicted mask P, G_d is the part of G within distance d of G's
contour (here: pixels of G that an erosion by a (2d+1)x(2d+1) square removes, i.e. the Chebyshev distance),
likewise P_d; BIoU_c = |G_d ∩ P_d| / |G_d ∪ P_d| with intersections and unions summed over the dataset, and
the metric is the mean over classes that occur. d defaults to 2% of the image diagonal, as in the paper.
Ignored pixels count neither in G nor in P.
"""
import math
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def inner_boundary(masks: Tensor, d: int) -> Tensor:
    """Bool[N,H,W] -> the pixels of each mask within Chebyshev distance d of its contour (image border counts
    as outside, so a mask touching the border has a boundary there too)."""
    outside = (~masks).float()[:, None]
    near_outside = F.max_pool2d(F.pad(outside, (d, d, d, d), value=1.0), 2 * d + 1, stride=1)[:, 0] > 0
    return masks & near_outside


def boundary_counts(pred: Tensor, gt: Tensor, num_classes: int, d: int, ignore_value: int = 255):
    """Per-class intersection and union of the boundary bands for one image: (inter [T], union [T]) int64.

    pred, gt: Long[H, W] class indices (gt may hold ``ignore_value``)."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in size")
    valid = gt != ignore_value
    classes = torch.arange(num_classes, device=gt.device)[:, None, None]
    g = (gt[None] == classes) & valid
    p = (pred[None] == classes) & valid
    g_d, p_d = inner_boundary(g, d), inner_boundary(p, d)
    inter = (g_d & p_d).flatten(1).sum(1)
    union = (g_d | p_d).flatten(1).sum(1)
    return inter, union


class BoundaryIoU:
    """Accumulates boundary IoU over images: ``update(pred, gt)`` then ``compute()`` -> {"BIoU", per class}."""

    def __init__(self, num_classes: int, ignore_value: int = 255, d: Optional[int] = None,
                 dilation_ratio: float = 0.02) -> None:
        self.num_classes, self.ignore_value = num_classes, ignore_value
        self.d, self.dilation_ratio = d, dilation_ratio
        self.inter = torch.zeros(num_classes, dtype=torch.int64)
        self.union = torch.zeros(num_classes, dtype=torch.int64)

    def band_width(self, h: int, w: int) -> int:
        return self.d if self.d is not None else max(1, round(self.dilation_ratio * math.hypot(h, w)))

    def update(self, pred: Tensor, gt: Tensor) -> None:
        inter, union = boundary_counts(pred.cpu(), gt.cpu(), self.num_classes,
                                       self.band_width(*gt.shape[-2:]), self.ignore_value)
        self.inter += inter
        self.union += union

    def compute(self) -> Dict[str, float]:
        present = self.union > 0
        per_class = torch.where(present, self.inter.double() / self.union.clamp_min(1).double(), torch.nan)
        biou = float(per_class[present].mean()) * 100 if present.any() else float("nan")
        return {"BIoU": biou, "per_class": (per_class * 100).tolist()}


class BoundaryIoUEvaluator:
    """detectron2 ``DatasetEvaluator`` of boundary IoU for a registered semantic-segmentation dataset whose
    label files hold class ids (``ignore_label`` from its metadata). Returns {"boundary": {"BIoU": ...}}."""

    def __init__(self, dataset_name: str, num_classes: Optional[int] = None) -> None:
        from detectron2.data import DatasetCatalog, MetadataCatalog

        meta = MetadataCatalog.get(dataset_name)
        self.num_classes = num_classes or len(meta.stuff_classes)
        self.ignore_value = meta.get("ignore_label", 255)
        self.gt_files = {r["file_name"]: r["sem_seg_file_name"] for r in DatasetCatalog.get(dataset_name)}
        self.reset()

    def reset(self) -> None:
        self.metric = BoundaryIoU(self.num_classes, self.ignore_value)

    def process(self, inputs, outputs) -> None:
        from ..data.image_io import read_label

        for x, out in zip(inputs, outputs):
            gt = torch.as_tensor(read_label(self.gt_files[x["file_name"]]).astype(np.int64))
            self.metric.update(out["sem_seg"].argmax(0).cpu(), gt)

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        from detectron2.utils import comm

        parts = comm.gather((self.metric.inter, self.metric.union), dst=0)
        if not comm.is_main_process():
            return {}
        self.metric.inter = sum(p[0] for p in parts)
        self.metric.union = sum(p[1] for p in parts)
        return {"boundary": {"BIoU": self.metric.compute()["BIoU"]}}
