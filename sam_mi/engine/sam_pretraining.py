"""Pre-train the tiny SAM with SAM's own recipe in miniature, so the tiny SAM-MI has a SAM that segments.

Real SAM weights are out of reach at tiny scale, and a random SAM returns about one meaningless mask per
image. This trains `build_tiny_sam` (segment-anything's own classes) the way SAM was trained
(Kirillov et al., "Segment Anything", arXiv 2304.02643, Sec. 3 and App. A "Training algorithm"):

- prompts: one positive point drawn uniformly inside a region, the region (a connected component of one
  class of a semantic label map, `region_map`) being the target; or, for a ``box_fraction`` of the prompts,
  the region's bounding box with SAM's noise (`jittered_boxes`; SAM draws a point or a box with equal
  probability, our default is points only, see below);
- multimask output (3 candidates) and the mask loss of the best candidate only (min over the 3);
- loss: focal 20 : dice 1 on the masks, plus the MSE between the predicted IoU of every candidate and its
  actual IoU with the target;
- optionally corrective rounds: a point drawn uniformly in the error region of the previous best mask
  (positive on a false negative, negative on a false positive), the previous low-res logits as mask prompt,
  single-mask output (SAM's 4th token), each round's loss added.

Images go through `PointPromptedSAM.preprocess` (resize longest side, normalise, pad) and prompts through
`points_to_input_frame`; the loss reads the low-res logits at points of the image frame with
`logits_to_out_size`'s geometry: training sees exactly the geometry SAM-MI's inference uses.

Deliberate differences from SAM, each an option of `TinySAMSchedule`:
- no data engine / automatic masks (the label map gives every region) and no MAE-initialised encoder;
- the mask loss is taken at `loss_points` points per mask chosen as Mask2Former does (uncertain points +
  uniform ones, sam_losses.sample_loss_points) instead of every pixel, for speed; the IoU target is exact;
- `mimetic_qk_scale` > 0 initialises the decoder's attentions mimetically (`mimetic_init_`): from default
  init SAM's decoder needs ~10^3 iterations before its masks depend on the prompt at all.

How long it takes (measured on the demo's synthetic set, 96 training / 16 validation images, regions of at
least 100 px, one CPU thread, 0.037 s per iteration; `tools/train_tiny_sam.py --eval-period 250` prints the
validation best-of-3 IoU of one point per region and the same with the prompt's x and y swapped, which stays
at 0.13-0.20 whatever the training): SAM's decoder first sits on a plateau where its masks ignore the prompt
(one candidate is the whole image, the others empty; both IoUs 0.06-0.18). With the defaults below it leaves
it after 500-1000 iterations: at 2000 iterations (74 s) the IoU is 0.30 / 0.28 (swapped 0.13 / 0.20) for
seeds 1 / 2; a 3000-iteration schedule reaches 0.32 (swapped 0.18), a 6000-iteration one 0.34 (0.17). The
demo trains 2000 (tools/demo.py --train-sam-iters). Nothing we tried made it leave the plateau sooner:
learning rate 1e-3 to 1e-2, 4 images or 64 prompts per step, prompt width 64, patch 4, a stronger positional
encoding, focal weight 1, single-mask output, flat colours instead of textures, mask tokens initialised to the
point embedding, a fixed-layout curriculum, or SAM's box prompts for half of the first prompts
(``box_fraction`` 0.5: 0.30 at 3000 iterations, against 0.32 without). On a set whose region positions are
fixed (tests/test_tiny_sam.py) it leaves the plateau within 400 iterations. Regions under ~100 px (a fraction
of one 16-px patch) are mostly unreachable at this patch size; dropping them (``min_region_area``) helps a
little.

The checkpoint is a plain state dict of `Sam` (segment-anything's format) written atomically; load it with
`sam_mi.modeling.sam.load_checkpoint(build_tiny_sam(S), path, "tiny")`, or MODEL.SAM_MI.SAM.CHECKPOINT.
Quality figures (single-point IoU, masks surviving AMG's filters) are in sam_quality.py.
"""

import json
import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from sam_mi.modeling.sam import build_tiny_sam
from sam_mi.modeling.sam.point_decoder import PointPromptedSAM, logits_to_out_size, points_to_input_frame

from ..utils.atomic_io import atomic_write, write_text_atomic
from .sam_losses import mask_iou, point_logits, sam_loss, sample_loss_points
from .sam_regions import RegionImage, load_region_images, pixel_centres, region_map, sample_region_points, uniform_pick

__all__ = [
    "RegionImage",
    "TinySAMSchedule",
    "region_map",
    "load_region_images",
    "pixel_centres",
    "sample_region_points",
    "decode_points",
    "jittered_boxes",
    "mimetic_init_",
    "train_tiny_sam",
    "save_sam_checkpoint",
]


# --------------------------------------------------------------------------------------------- decoder
def decode_points(
    sam: nn.Module,
    embedding: torch.Tensor,
    coords: torch.Tensor,
    labels: torch.Tensor,
    mask_input: Optional[torch.Tensor] = None,
    multimask: bool = True,
    boxes: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """segment-anything's prompt encoder + mask decoder for one image (as `Sam.forward` does per image).

    embedding: [1,C,h,w]; coords: [P,N,2] input-frame pixels; labels: [P,N] (1 positive, 0 negative);
    mask_input: optional [P,1,4h,4w] low-res logits. Returns (low-res logits [P,K,4h,4w], iou [P,K]),
    K = 3 with multimask else 1.
    """
    if boxes is not None:
        # A box prompt instead of points for the prompts whose row of `boxes` is finite: both take two
        # tokens (a point gets the padding token), so the two kinds decode in one batch.
        is_box = torch.isfinite(boxes).all(dim=1)
        sparse_pt, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=mask_input)
        if bool(is_box.any()):
            sparse_box, _ = sam.prompt_encoder(points=None, boxes=boxes.nan_to_num(0.0), masks=None)
            sparse = torch.where(is_box[:, None, None], sparse_box, sparse_pt)
        else:
            sparse = sparse_pt
    else:
        sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=mask_input)
    return sam.mask_decoder(
        image_embeddings=embedding,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )


def _corrective_points(
    pred: torch.Tensor, target: torch.Tensor, generator: torch.Generator
) -> Tuple[torch.Tensor, torch.Tensor]:
    """SAM's next prompt: a pixel uniform in the error region, positive if a false negative.

    pred, target: bool [P,H,W] -> (normalised points [P,2], labels [P]); a prompt without error gets a
    positive point inside its target (it adds no information, as a repeated click would).
    """
    p, h, w = target.shape
    error = (pred ^ target).flatten(1)
    error = torch.where(error.any(1, keepdim=True), error, target.flatten(1))
    index = uniform_pick(error, generator)
    labels = target.flatten(1).gather(1, index[:, None])[:, 0].long()
    return pixel_centres(index, h, w), labels


def jittered_boxes(
    target: torch.Tensor, generator: torch.Generator, noise: float = 0.1, max_px: float = 20.0
) -> torch.Tensor:
    """SAM's box prompt: the target's bounding box, each coordinate moved by Gaussian noise of std `noise`
    times the box's side, at most `max_px` pixels (SAM App. A, "Training algorithm").

    target: bool [P,H,W] (non-empty masks) -> normalised (x0, y0, x1, y1) [P,4], pixel edges, in [0,1].
    """
    p, h, w = target.shape
    cols, rows = target.any(dim=1), target.any(dim=2)  # [P,W], [P,H]
    ar_w, ar_h = torch.arange(w), torch.arange(h)
    x0 = torch.where(cols, ar_w, w).min(dim=1)[0]
    x1 = torch.where(cols, ar_w, -1).max(dim=1)[0] + 1
    y0 = torch.where(rows, ar_h, h).min(dim=1)[0]
    y1 = torch.where(rows, ar_h, -1).max(dim=1)[0] + 1
    box = torch.stack([x0, y0, x1, y1], dim=1).float()
    side = torch.stack([x1 - x0, y1 - y0, x1 - x0, y1 - y0], dim=1).float()
    jitter = (torch.randn(p, 4, generator=generator) * noise * side).clamp(-max_px, max_px)
    box = box + jitter
    return (box / box.new_tensor([w, h, w, h])).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TinySAMSchedule:
    """Hyper-parameters of the tiny SAM's pre-training (AdamW, linear warm-up then cosine decay).

    SAM used AdamW (lr 8e-4, weight decay 0.1, 250 warm-up iterations, 256 images x 64 masks per step);
    here one image and 16 prompts per step, as many steps as the budget allows, and no weight decay (it
    pulls the small, slowly growing prompt pathway back to zero).
    """

    image_size: int = 128
    iters: int = 600
    images_per_batch: int = 1
    prompts_per_image: int = 16
    loss_points: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_iters: int = 50
    grad_clip: float = 1.0
    corrective_rounds: int = 0
    box_fraction: float = 0.0
    mimetic_qk_scale: float = 3.0
    min_region_area: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("iters", "images_per_batch", "prompts_per_image", "loss_points", "min_region_area"):
            if getattr(self, name) < 1:
                raise ValueError(f"TinySAMSchedule.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.box_fraction <= 1.0:
            raise ValueError(f"TinySAMSchedule.box_fraction must be in [0, 1], got {self.box_fraction}")
        if self.corrective_rounds < 0:
            raise ValueError(f"TinySAMSchedule.corrective_rounds must be >= 0, got {self.corrective_rounds}")


@torch.no_grad()
def mimetic_init_(decoder: nn.Module, qk_scale: float, generator: torch.Generator) -> None:
    """Initialise every attention of SAM's two-way transformer so that W_q·W_kᵀ ∝ a projection and
    W_o·W_v ≈ a projection (Trockman & Kolter, "Mimetic Initialization of Self-Attention Layers", ICML 2023).

    At default init a point token's attention is uniform: the first self-attention (which has no residual
    in SAM's block, `skip_first_layer_pe`) averages the point away, and no token attends to the image at the
    point's location, so a from-scratch decoder spends ~10^3 iterations before its masks depend on the
    prompt. With this init tokens attend to what resembles them (positional encodings included), which
    keeps the point's identity and makes its location and appearance reachable from the first iteration.
    """
    from segment_anything.modeling.transformer import Attention

    for module in decoder.modules():
        if not isinstance(module, Attention):
            continue
        d_in, d_int = module.q_proj.in_features, module.q_proj.out_features
        qk = torch.linalg.qr(torch.randn(d_in, d_int, generator=generator))[0].T  # [d_int,d_in], orthonormal rows
        vo = torch.linalg.qr(torch.randn(d_in, d_int, generator=generator))[0].T
        module.q_proj.weight.copy_(qk_scale * qk)
        module.k_proj.weight.copy_(qk_scale * qk)
        module.v_proj.weight.copy_(vo)
        module.out_proj.weight.copy_(vo.T)


def _lr_factor(it: int, schedule: TinySAMSchedule) -> float:
    if it < schedule.warmup_iters:
        return (it + 1) / schedule.warmup_iters
    progress = (it - schedule.warmup_iters) / max(1, schedule.iters - schedule.warmup_iters)
    return 0.5 * (1 + np.cos(np.pi * min(1.0, progress)))


def _candidate_loss(
    low: torch.Tensor,
    iou: torch.Tensor,
    sample: RegionImage,
    ids: torch.Tensor,
    target: torch.Tensor,
    frame: Tuple[Tuple[int, int], Tuple[int, int]],
    num_points: int,
    generator: torch.Generator,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
    """`sam_loss` of decoder outputs low [P,K,l,l], iou [P,K] for regions `ids` [P] (masks target [P,H,W]).

    The mask loss is taken at `sample_loss_points`; the IoU target at every pixel (no gradient).
    Returns (loss, parts, binary masks [P,K,H,W] in the image frame).
    """
    (h_in, w_in), (s, _) = frame
    p, k = low.shape[:2]
    h, w = target.shape[-2:]
    flat = low.flatten(0, 1)
    points = sample_loss_points(flat, (h_in, w_in), (s, s), num_points, generator)  # [PK,N,2]
    logits = point_logits(flat, points, (h_in, w_in), (s, s)).view(p, k, -1)
    cols = (points[..., 0] * w).long().clamp_(0, w - 1)
    rows = (points[..., 1] * h).long().clamp_(0, h - 1)
    point_targets = (sample.regions[rows, cols] == ids.repeat_interleave(k)[:, None]).view(p, k, -1)
    with torch.no_grad():
        masks = (logits_to_out_size(flat.detach(), (h_in, w_in), (s, s), (h, w)) > 0).view(p, k, h, w)
        actual = mask_iou(masks, target[:, None])
    loss, parts = sam_loss(logits, point_targets, iou, actual)
    parts["actual_iou"] = actual
    return loss, parts, masks


def _image_loss(
    sam: nn.Module,
    frame: PointPromptedSAM,
    embedding: torch.Tensor,
    sample: RegionImage,
    schedule: TinySAMSchedule,
    generator: torch.Generator,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """SAM's loss for `prompts_per_image` prompts of one image (and its corrective rounds)."""
    h, w = sample.regions.shape
    h_in, w_in = frame.input_size(h, w)
    geometry = ((h_in, w_in), (frame.image_size, frame.image_size))
    points, ids = sample_region_points(sample.regions, sample.num_regions, schedule.prompts_per_image, generator)
    target = sample.regions[None] == ids[:, None, None]  # [P,H,W]
    coords = points_to_input_frame(points, (h, w), (h_in, w_in))[:, None, :]  # [P,1,2]
    labels = torch.ones(coords.shape[:2], dtype=torch.int)
    boxes = None
    if schedule.box_fraction > 0:
        use_box = torch.rand(len(ids), generator=generator) < schedule.box_fraction
        boxes = torch.where(use_box[:, None], jittered_boxes(target, generator), float("nan"))
        boxes = points_to_input_frame(boxes.view(-1, 2), (h, w), (h_in, w_in)).view(-1, 4)
    low, iou = decode_points(sam, embedding, coords, labels, multimask=True, boxes=boxes)
    n = schedule.loss_points
    loss, parts, masks = _candidate_loss(low, iou, sample, ids, target, geometry, n, generator)
    best_iou = parts["actual_iou"].max(dim=1)[0].mean()
    stats = {"mask": float(parts["mask"]), "iou": float(parts["iou"]), "best_iou": float(best_iou)}
    rows = torch.arange(low.shape[0])
    prev_low, prev_pred = low[rows, parts["best"]], masks[rows, parts["best"]]
    for _ in range(schedule.corrective_rounds):
        new_points, new_labels = _corrective_points(prev_pred, target, generator)
        coords = torch.cat([coords, points_to_input_frame(new_points, (h, w), (h_in, w_in))[:, None]], dim=1)
        labels = torch.cat([labels, new_labels[:, None].int()], dim=1)
        low, iou = decode_points(sam, embedding, coords, labels, prev_low.detach()[:, None], multimask=False)
        round_loss, _, masks = _candidate_loss(low, iou, sample, ids, target, geometry, n, generator)
        loss = loss + round_loss
        prev_low, prev_pred = low[:, 0], masks[:, 0]
    return loss, stats


def train_tiny_sam(
    samples: Sequence[RegionImage],
    schedule: TinySAMSchedule = TinySAMSchedule(),
    log: Optional[Callable[[str], None]] = None,
    log_period: int = 100,
    on_period: Optional[Callable[[int, nn.Module], None]] = None,
) -> Tuple[nn.Module, Dict[str, float]]:
    """Train `build_tiny_sam(schedule.image_size)` on `samples`; returns (the `Sam`, in eval mode, and
    {"seconds", "final_mask_loss", "final_iou_loss", "final_best_iou"} averaged over the last 10%).

    `on_period(it, sam)`, if given, is called with SAM in eval mode after every `log_period` iterations (e.g.
    to follow the validation IoU, as tools/train_tiny_sam.py --eval-period does); the model returns to
    training afterwards, and the callback must not draw from torch's global RNG if the run is to be
    reproduced without it.

    Deterministic for a given schedule, data and thread count: the model is initialised under
    `schedule.seed` (in a forked RNG, the caller's global RNG state is left untouched) and every random
    draw uses one seeded generator.
    """
    if not samples:
        raise ValueError("train_tiny_sam needs at least one RegionImage")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(schedule.seed)
        sam = build_tiny_sam(schedule.image_size)
        if schedule.mimetic_qk_scale > 0:
            init_rng = torch.Generator().manual_seed(schedule.seed)
            mimetic_init_(sam.mask_decoder, schedule.mimetic_qk_scale, init_rng)
    # The inference wrapper's own preprocessing and geometry; it freezes SAM on construction, so SAM is
    # unfrozen right after (SAM-MI freezes it again when it wraps the trained weights).
    frame = PointPromptedSAM(sam, schedule.image_size)
    sam.requires_grad_(True)
    sam.train()
    inputs = [frame.preprocess(s.image[None].float())[0] for s in samples]  # [3,S,S] each
    generator = torch.Generator().manual_seed(schedule.seed)
    params = [p for p in sam.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=schedule.lr, weight_decay=schedule.weight_decay)
    history: List[Dict[str, float]] = []
    start = time.perf_counter()
    order = torch.randperm(len(samples), generator=generator)
    cursor = 0
    for it in range(schedule.iters):
        if cursor + schedule.images_per_batch > len(order):  # a new epoch: reshuffle
            order, cursor = torch.randperm(len(samples), generator=generator), 0
        batch = order[cursor : cursor + schedule.images_per_batch].tolist()
        cursor += schedule.images_per_batch
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr * _lr_factor(it, schedule)
        embeddings = sam.image_encoder(torch.stack([inputs[i] for i in batch]))
        losses, stats = [], []
        for j, i in enumerate(batch):
            loss, st = _image_loss(sam, frame, embeddings[j : j + 1], samples[i], schedule, generator)
            losses.append(loss)
            stats.append(st)
        total = torch.stack(losses).mean()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if schedule.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, schedule.grad_clip)
        optimizer.step()
        history.append({k: float(np.mean([s[k] for s in stats])) for k in stats[0]})
        if log is not None and ((it + 1) % log_period == 0 or it + 1 == schedule.iters):
            h = history[-1]
            log(
                f"tiny SAM iter {it + 1}/{schedule.iters}: mask loss {h['mask']:.3f}, IoU loss {h['iou']:.4f}, "
                f"best-of-3 IoU {h['best_iou']:.3f}, {time.perf_counter() - start:.1f} s"
            )
        if on_period is not None and (it + 1) % log_period == 0:
            sam.eval()
            with torch.no_grad():
                on_period(it + 1, sam)
            sam.train().requires_grad_(True)  # PointPromptedSAM (sam_quality's evaluation) freezes SAM
    sam.eval()
    sam.requires_grad_(False)
    tail = history[-max(1, len(history) // 10) :]
    summary = {"seconds": time.perf_counter() - start}
    for key, name in (("mask", "final_mask_loss"), ("iou", "final_iou_loss"), ("best_iou", "final_best_iou")):
        summary[name] = float(np.mean([h[key] for h in tail]))
    return sam, summary


# ------------------------------------------------------------------------------------------ checkpoint
def save_sam_checkpoint(sam: nn.Module, path: str, metadata: Optional[Mapping] = None) -> None:
    """Write `sam.state_dict()` to `path` in segment-anything's format (a plain state dict, what
    `sam_model_registry[...](checkpoint=...)` and `load_checkpoint` read), atomically (temp file in the same
    folder, flush + fsync, os.replace). `metadata`, if given, goes to `<path minus .pth>.json`, also atomically.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)

    state = {k: v.detach().cpu().contiguous() for k, v in sam.state_dict().items()}
    with atomic_write(path, "wb") as f:
        torch.save(state, f)
    if metadata is not None:
        write_text_atomic(os.path.splitext(path)[0] + ".json", json.dumps(dict(metadata), indent=2, sort_keys=True))
