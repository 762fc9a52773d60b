"""From point prompts to the masks DMI injects: SAM decodes each image's points, SMAgg merges the results
(Sec. 3.3, Eq. 6-7). The meta-architecture calls :func:`propose_masks` between its prompter and cost head.
"""
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.stage_timer import stage
from .dmi import pad_masks
from .smagg import shallow_mask_aggregation


@dataclass
class MaskProposals:
    """Masks of one batch, padded to a common count.

    masks: Bool[B, N, H, W] at the decoder's output resolution (4h x 4w of the CLIP grid); padded rows empty.
    num_points / num_sam_masks / num_masks: per image, the sampled prompts, SAM's masks after its filters and
    NMS, and the masks left after SMAgg (what DMI receives).
    """

    masks: Tensor
    num_points: List[int]
    num_sam_masks: List[int]
    num_masks: List[int]


def text_masks_from_logits(class_logits: Tensor, out_size: Tuple[int, int]) -> Tensor:
    """M^text (Sec. 3.3): one-hot argmax over classes [T, h, w] -> Bool[T, H, W] (nearest upsampling).

    The argmax partitions the image, so with alpha_sma >= 0.5 every SAM mask joins at most one class.
    """
    labels = class_logits.argmax(dim=0)  # [h, w]
    labels = F.interpolate(labels[None, None].float(), size=out_size, mode="nearest")[0, 0].long()
    return F.one_hot(labels, num_classes=class_logits.shape[0]).permute(2, 0, 1).bool()


@torch.no_grad()
def propose_masks(
    mask_generator: nn.Module,
    images: Tensor,
    points: Callable[[int], Tensor],
    class_logits: Tensor,
    out_size: Tuple[int, int],
    alpha_sma: Optional[float],
) -> MaskProposals:
    """SAM's masks for a batch, merged by SMAgg when ``alpha_sma`` is not None.

    Args:
        mask_generator: a frozen mask generator (``encode`` / ``generate``, sam/registry.py).
        images: float [B, 3, H, W] 0-255 RGB, the frame the points refer to.
        points: image index -> that image's prompts [N_p, 2] (x, y) in [0, 1] (the prompter's ``sample``).
        class_logits: [B, T, h, w] logits whose argmax gives M^text (TSPP's mask output, or the raw cost maps).
        out_size: resolution of the returned masks.
        alpha_sma: SMAgg's threshold (Eq. 7); None keeps SAM's masks as they are ("w/o SMAgg").
    """
    with stage("sam_encoder"):
        embeddings = mask_generator.encode(images)
    per_image, n_points, n_sam = [], [], []
    for i in range(images.shape[0]):  # per image: each has its own number of points and masks
        with stage("sam_decoding"):
            pts = points(i)
            masks, _ = mask_generator.generate(embeddings[i], pts, tuple(images.shape[-2:]), out_size)
        n_points.append(int(pts.shape[0]))
        n_sam.append(int(masks.shape[0]))
        if alpha_sma is not None and masks.shape[0] > 0:
            with stage("smagg"):
                text_masks = text_masks_from_logits(class_logits[i].detach(), out_size)
                masks = shallow_mask_aggregation(masks, text_masks, alpha_sma)
        per_image.append(masks)
    return MaskProposals(
        masks=pad_masks(per_image),
        num_points=n_points,
        num_sam_masks=n_sam,
        num_masks=[int(m.shape[0]) for m in per_image],
    )
