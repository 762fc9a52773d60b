"""The tiny SAM's training data: regions of semantic label maps and SAM's point prompts inside them.

A region is a connected component of one class (SAM's masks are objects and parts; for "stuff" label maps a
component is the nearest equivalent). Used by sam_pretraining.py (training) and sam_quality.py (evaluation).
"""

import os
from dataclasses import dataclass
from typing import List, Mapping, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

__all__ = ["RegionImage", "region_map", "load_region_images", "pixel_centres", "sample_region_points", "uniform_pick"]


def region_map(label: np.ndarray, ignore_label: int = 255, min_area: int = 1) -> Tuple[np.ndarray, int]:
    """Regions of a semantic label map: connected components of each class (4-connectivity,
    `scipy.ndimage.label`'s default), ignore pixels excluded.

    label: [H,W] integer class ids -> (ids int32 [H,W] in 1..R, 0 for ignore or a component smaller than
    `min_area` pixels; R). Ids are numbered class by class, then in scan order within a class.
    """
    if label.ndim != 2:
        raise ValueError(f"region_map expects a [H,W] label map, got shape {label.shape}")
    ids = np.zeros(label.shape, dtype=np.int32)
    count = 0
    for cls in np.unique(label):
        if cls == ignore_label:
            continue
        comp, n = ndimage.label(label == cls)
        if n == 0:
            continue
        areas = np.bincount(comp.ravel(), minlength=n + 1)
        keep = np.flatnonzero(areas[1:] >= min_area) + 1
        new = np.zeros(n + 1, dtype=np.int32)
        new[keep] = np.arange(count + 1, count + 1 + keep.size, dtype=np.int32)
        ids = np.where(comp > 0, new[comp], ids)
        count += keep.size
    return ids, count


@dataclass
class RegionImage:
    """One training/validation image with its regions.

    image: uint8 [3,H,W] RGB; regions: int64 [H,W] region ids 1..num_regions, 0 = no region.
    """

    image: torch.Tensor
    regions: torch.Tensor
    num_regions: int
    file_name: str = ""


def load_region_images(records: Sequence[Mapping], ignore_label: int = 255, min_area: int = 16) -> List[RegionImage]:
    """Read detectron2 semantic-segmentation records ({"file_name", "sem_seg_file_name"}) into RegionImages.

    Images without any region of at least `min_area` pixels are dropped.
    """
    out = []
    for rec in records:
        for key in ("file_name", "sem_seg_file_name"):
            if key not in rec or not os.path.isfile(rec[key]):
                raise FileNotFoundError(f"record {rec.get('file_name', rec)}: '{key}' is missing or not a file")
        image = np.asarray(Image.open(rec["file_name"]).convert("RGB"))
        label = np.asarray(Image.open(rec["sem_seg_file_name"]))
        if label.ndim != 2 or label.shape != image.shape[:2]:
            raise ValueError(
                f"{rec['sem_seg_file_name']}: expected a single-channel label map of the image's size "
                f"{image.shape[:2]}, got shape {label.shape}"
            )
        ids, n = region_map(label, ignore_label, min_area)
        if n:
            image_t = torch.from_numpy(image.transpose(2, 0, 1).copy())
            out.append(RegionImage(image_t, torch.from_numpy(ids.astype(np.int64)), n, rec["file_name"]))
    if not out:
        raise ValueError(f"none of the {len(records)} records has a region of at least {min_area} pixels")
    return out


def pixel_centres(flat_index: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Flat pixel indices [N] -> normalised (x, y) of the pixel centres [N,2] (the convention of `generate`)."""
    ys, xs = flat_index // w, flat_index % w
    return torch.stack([(xs.float() + 0.5) / w, (ys.float() + 0.5) / h], dim=-1)


def uniform_pick(candidates: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Bool [P,M] -> one index per row, uniform among its True entries (rows must have one): the argmax of
    uniform noise over the allowed entries."""
    noise = torch.rand(candidates.shape, generator=generator)
    return torch.where(candidates, noise, -1.0).argmax(dim=1)


def sample_region_points(
    regions: torch.Tensor, num_regions: int, num_points: int, generator: torch.Generator
) -> Tuple[torch.Tensor, torch.Tensor]:
    """SAM's training prompt: a region chosen uniformly, then a pixel uniformly inside it.

    regions: int64 [H,W] (0 = none) -> (points [P,2] normalised (x, y) pixel centres, region ids [P]).
    """
    h, w = regions.shape
    flat = regions.flatten()
    order = torch.argsort(flat, stable=True)  # pixels grouped by region id
    counts = torch.bincount(flat, minlength=num_regions + 1)
    starts = torch.cumsum(counts, 0) - counts
    if bool((counts[1:] == 0).any()):
        raise ValueError(f"sample_region_points: some of the region ids 1..{num_regions} have no pixel")
    ids = torch.randint(1, num_regions + 1, (num_points,), generator=generator)
    offset = (torch.rand(num_points, generator=generator) * counts[ids]).long().clamp_(max=counts[ids] - 1)
    return pixel_centres(order[starts[ids] + offset], h, w), ids
