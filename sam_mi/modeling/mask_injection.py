"""From TSPP's outputs to the masks that DMI injects: point sampling -> SAM -> SMAgg (Sec. 3.2-3.3).

Kept apart from the meta-architecture so that the latency benchmark can time each stage with the same code.
"""
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .dmi import pad_masks
from .smagg import shallow_mask_aggregation
from .tspp import grid_points, random_points, sample_points

SAMPLING_MODES = ("learned", "grid", "random")


@dataclass
class InjectionMasks:
    """Masks of one batch, padded to a common count.

    masks: Bool[B, N, H, W] at the decoder's output resolution (4h x 4w of the CLIP grid); padded rows empty.
    num_points / num_sam_masks / num_masks: per image, the sampled prompts, SAM's masks after its filters and
    NMS, and the masks left after SMAgg (what DMI receives).
    """

    masks: Tensor
    num_points: List[int]
    num_sam_masks: List[int]
    num_masks: List[int]


def select_points(
    mode: str,
    prob: Optional[Tensor],
    grid_size: int,
    num_random: int,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Point prompts for one image, as (x, y) in [0, 1] (Table 5's three strategies).

    Args:
        mode: "learned" draws from TSPP's probability map ``prob`` [G, G] (Eq. 2); "grid" returns all G^2
            points; "random" draws ``num_random`` distinct grid points uniformly.
    """
    if mode == "learned":
        if prob is None:
            raise ValueError("TSPP sampling 'learned' needs MODEL.SAM_MI.TSPP.ENABLED True")
        return sample_points(prob, generator=generator)
    device = prob.device if prob is not None else None
    if mode == "grid":
        pts = grid_points(grid_size)
    elif mode == "random":
        pts = random_points(grid_size, num_random, generator=generator)
    else:
        raise ValueError(f"MODEL.SAM_MI.TSPP.SAMPLING must be one of {SAMPLING_MODES}, got {mode!r}")
    return pts.to(device) if device is not None else pts


def text_masks_from_logits(class_logits: Tensor, out_size: Tuple[int, int]) -> Tensor:
    """M^text (Sec. 3.3): one-hot argmax over classes [T, h, w] -> Bool[T, H, W] (nearest upsampling).

    The argmax partitions the image, so with alpha_sma >= 0.5 every SAM mask joins at most one class.
    """
    labels = class_logits.argmax(dim=0)  # [h, w]
    labels = F.interpolate(labels[None, None].float(), size=out_size, mode="nearest")[0, 0].long()
    return F.one_hot(labels, num_classes=class_logits.shape[0]).permute(2, 0, 1).bool()


def generate_injection_masks(
    sam,
    images: Tensor,
    prob: Optional[Tensor],
    class_logits: Tensor,
    out_size: Tuple[int, int],
    sampling: str,
    grid_size: int,
    num_random: int,
    smagg: bool,
    alpha_sma: float,
    generator: Optional[torch.Generator] = None,
) -> InjectionMasks:
    """Sample prompts, decode SAM masks and (optionally) merge them with SMAgg, for a batch.

    Args:
        sam: a ``PointPromptedSAM`` (frozen).
        images: float [B, 3, H, W] 0-255 RGB, the frame the points refer to.
        prob: TSPP's probabilities [B, G, G] (None when TSPP is off).
        class_logits: [B, T, h, w] logits whose argmax gives M^text (TSPP's mask output, or the raw CLIP cost
            maps when TSPP is off).
        out_size: resolution of the returned masks.
    """
    with torch.no_grad():
        embeddings = sam.encode(images)
    per_image, n_points, n_sam = [], [], []
    for i in range(images.shape[0]):
        points = select_points(
            sampling, None if prob is None else prob[i].detach(), grid_size, num_random, generator
        ).to(images.device)
        with torch.no_grad():
            masks, _ = sam.generate(embeddings[i], points, tuple(images.shape[-2:]), out_size)
        n_points.append(int(points.shape[0]))
        n_sam.append(int(masks.shape[0]))
        if smagg and masks.shape[0] > 0:
            masks = shallow_mask_aggregation(
                masks, text_masks_from_logits(class_logits[i].detach(), out_size), alpha_sma
            )
        per_image.append(masks)
    return InjectionMasks(
        masks=pad_masks(per_image),
        num_points=n_points,
        num_sam_masks=n_sam,
        num_masks=[int(m.shape[0]) for m in per_image],
    )


def resize_masks(masks: Tensor, size: Tuple[int, int]) -> Tensor:
    """Bool[B, N, H, W] -> Bool[B, N, h, w]: a pixel of the coarser grid belongs to a mask when at least half
    of the area it covers does (area interpolation), so a mask thinner than a cell vanishes instead of
    spreading over its neighbours."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    b, n = masks.shape[:2]
    area = F.interpolate(masks.flatten(0, 1)[:, None].float(), size=size, mode="area")
    return (area[:, 0] >= 0.5).view(b, n, *size)
