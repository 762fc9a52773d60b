"""From point prompts to the masks DMI injects: SAM decodes each image's points, SMAgg merges the results
(Sec. 3.3, Eq. 6-7). The meta-architecture calls :func:`propose_masks` between its prompter and cost head.
"""
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.stage_timer import stage
from .dmi import pad_masks
from .smagg import shallow_mask_aggregation


_REGION_CHUNK = 32  # regions resized at once by region_masks


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
    #: per image, kept only when asked (predictor, figures): the prompts [N_p,2] and SAM's masks before SMAgg
    points: Optional[List[Tensor]] = None
    sam_masks: Optional[List[Tensor]] = None


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
    keep_intermediates: bool = False,
    use_cache: bool = False,
) -> MaskProposals:
    """SAM's masks for a batch, merged by SMAgg when ``alpha_sma`` is not None.

    Args:
        mask_generator: a frozen mask generator (``encode`` / ``generate``, sam/registry.py).
        images: float [B, 3, H, W] 0-255 RGB, the frame the points refer to.
        points: image index -> that image's prompts [N_p, 2] (x, y) in [0, 1] (the prompter's ``sample``).
        class_logits: [B, T, h, w] logits whose argmax gives M^text (TSPP's mask output, or the raw cost maps).
        out_size: resolution of the returned masks.
        alpha_sma: SMAgg's threshold (Eq. 7); None keeps SAM's masks as they are ("w/o SMAgg").
        keep_intermediates: also return each image's prompts and SAM masks before SMAgg.
        use_cache: let the generator read / fill its image-embedding cache (evaluation only).
    """
    with stage("sam_encoder"):
        embeddings = mask_generator.encode(images, use_cache=use_cache)
    sam_masks, all_points = [], []
    for i in range(images.shape[0]):  # per image: each has its own number of points and masks
        with stage("sam_decoding"):
            pts = points(i)
            masks, _ = mask_generator.generate(embeddings[i], pts, tuple(images.shape[-2:]), out_size)
        all_points.append(pts)
        sam_masks.append(masks)
    return aggregate_masks(sam_masks, all_points, class_logits, out_size, alpha_sma, keep_intermediates)


def aggregate_masks(
    sam_masks: List[Tensor],
    points: List[Tensor],
    class_logits: Tensor,
    out_size: Tuple[int, int],
    alpha_sma: Optional[float],
    keep_intermediates: bool = False,
) -> MaskProposals:
    """SMAgg (Eq. 6-7) on each image's masks Bool[N_s,H,W] (SAM's, or ground-truth regions for the oracle
    diagnostic), then padding over the batch. ``points`` are the prompts that produced them (counted only)."""
    merged = []
    for i, masks in enumerate(sam_masks):
        if alpha_sma is not None and masks.shape[0] > 0:
            with stage("smagg"):
                text_masks = text_masks_from_logits(class_logits[i].detach(), out_size)
                masks = shallow_mask_aggregation(masks, text_masks, alpha_sma)
        merged.append(masks)
    return MaskProposals(
        masks=pad_masks(merged),
        num_points=[int(p.shape[0]) for p in points],
        num_sam_masks=[int(m.shape[0]) for m in sam_masks],
        num_masks=[int(m.shape[0]) for m in merged],
        points=points if keep_intermediates else None,
        sam_masks=sam_masks if keep_intermediates else None,
    )


def region_masks(sem_seg: Tensor, out_size: Tuple[int, int], ignore_value: int = 255) -> Tensor:
    """The oracle's masks: every connected region of one class in a label map [H, W] -> Bool[N, h, w].

    Regions are 8-connected components (scipy.ndimage.label) per class, ignored pixels excluded; each is
    resized to ``out_size`` by area (a cell belongs to a region when at least half of it does), and regions
    that vanish at that size are dropped. Used by ``MODEL.SAM_MI.SAM.ORACLE_MASKS`` to show the ceiling of
    mask injection: the masks a perfect SAM would give.
    """
    from scipy import ndimage

    labels = sem_seg.detach().cpu().numpy()
    structure = np.ones((3, 3), dtype=bool)
    components = np.zeros(labels.shape, dtype=np.int64)
    offset = 0
    for c in np.unique(labels):  # per class present (not per pixel): scipy labels its components at once
        if c == ignore_value:
            continue
        comp, n = ndimage.label(labels == c, structure=structure)
        components[comp > 0] = comp[comp > 0] + offset
        offset += n
    if offset == 0:
        return torch.zeros(0, *out_size, dtype=torch.bool, device=sem_seg.device)
    comp = torch.as_tensor(components, device=sem_seg.device)
    ids = torch.arange(1, offset + 1, device=comp.device)
    chunks = []
    for start in range(0, offset, _REGION_CHUNK):  # bounds memory: [chunk, H, W] floats at a time
        onehot = (comp[None] == ids[start : start + _REGION_CHUNK, None, None]).float()
        chunks.append(F.interpolate(onehot[None], size=out_size, mode="area")[0] >= 0.5)
    masks = torch.cat(chunks)
    return masks[masks.flatten(1).any(dim=1)]


@torch.no_grad()
def propose_masks_in_views(
    mask_generator: nn.Module,
    image: Tensor,
    boxes: Tensor,
    points: Callable[[int], Tensor],
    class_logits: Tensor,
    out_size: Tuple[int, int],
    alpha_sma: Optional[float],
    keep_intermediates: bool = False,
    use_cache: bool = False,
) -> MaskProposals:
    """SAM as the paper runs it in sliding-window evaluation (Sec. 4.1: "384x384 for CLIP and 1024x1024 for
    SAM"): the image encoder runs once on the whole image, each view's points are decoded on that embedding,
    and the masks are brought into each view's frame.

    Args:
        image: float [3, H, W] 0-255, the original image. boxes: [V, 4] (x0, y0, x1, y1) of each view in the
            image's pixels (inference.sliding_window_boxes). points: view index -> prompts [N_p, 2] (x, y) in
            [0, 1] of that view. class_logits: [V, T, h, w] per view (M^text for SMAgg).
        out_size: (h_o, w_o) of the masks in each view's frame.
    Masks are decoded at the image resolution where a view spans ``out_size`` cells, then cropped to the view
    (exact integer offsets for the protocol's 640 / 384 / 0.333 and the tiny configs); masks that leave the
    view empty are dropped.
    """
    with stage("sam_encoder"):
        embedding = mask_generator.encode(image[None], use_cache=use_cache)[0]
    h, w = int(image.shape[-2]), int(image.shape[-1])
    h_o, w_o = out_size
    sam_masks, all_points = [], []
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):  # per view: each has its own points
        with stage("sam_decoding"):
            pts = points(i)
            in_image = torch.stack([(x0 + pts[:, 0] * (x1 - x0)) / w, (y0 + pts[:, 1] * (y1 - y0)) / h], dim=1)
            full = (max(h_o, round(h_o * h / (y1 - y0))), max(w_o, round(w_o * w / (x1 - x0))))
            masks, _ = mask_generator.generate(embedding, in_image, (h, w), full)
            r0 = min(max(0, round(y0 * full[0] / h)), full[0] - h_o)
            c0 = min(max(0, round(x0 * full[1] / w)), full[1] - w_o)
            masks = masks[:, r0 : r0 + h_o, c0 : c0 + w_o]
            masks = masks[masks.flatten(1).any(dim=1)]
        all_points.append(pts)
        sam_masks.append(masks)
    return aggregate_masks(sam_masks, all_points, class_logits, out_size, alpha_sma, keep_intermediates)
