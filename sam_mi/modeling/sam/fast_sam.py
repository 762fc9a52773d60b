"""FastSAM (paper Table 9: "FastSAM") behind `PointPromptedSAM`, built from `ultralytics`.

FastSAM ("x" = FastSAM-x / YOLOv8x-seg, 72M; "s" = FastSAM-s / YOLOv8s-seg) is a "segment everything"
model, not point-promptable at a decoder. Point prompting follows FastSAM's own point prompt (ultralytics
`FastSAMPredictor.prompt`): run everything mode once per image, keep the masks that contain a positive
point. See `FastSAMPointPrompted` for the mapping onto `encode` / `generate`.
"""

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn
from torchvision.ops import batched_nms

from .checkpoint import OFFICIAL_IMAGE_SIZE, require_checkpoint
from .point_decoder import (
    PointPromptedSAM,
    check_generate_args,
    filter_candidates,
    logits_to_out_size,
    points_to_input_frame,
)
from .registry import mask_generator_args, register_mask_generator
from .ultralytics_support import _require_ultralytics

FAST_SAM_CHECKPOINT_URLS = {
    t: f"https://github.com/ultralytics/assets/releases (FastSAM-{t}.pt; also linked from "
    "https://github.com/CASIA-IVA-Lab/FastSAM)"
    for t in ("x", "s")
}
#: FastSAM model type -> ultralytics architecture yaml (FastSAM is YOLOv8-seg with one class); "tiny" = n.
FAST_SAM_ARCHS = {"x": "yolov8x-seg.yaml", "s": "yolov8s-seg.yaml", "tiny": "yolov8n-seg.yaml"}
_YOLO_STRIDE = 32  # coarsest YOLOv8 stride; P3/P4/P5 at 8/16/32, mask prototypes at 4


def pack_yolo_outputs(preds: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Fold YOLOv8-seg's raw outputs into one embedding at the stride-32 grid (lossless, pixel_unshuffle).

    preds: [B,C_p,A] per-anchor outputs (xywh, class scores, mask coefficients), anchors of P3 (S/8)², P4
    (S/16)², P5 (S/32)² in row-major order; protos: [B,nm,S/4,S/4].
    Returns [B, nm·64 + C_p·21, S/32, S/32] = cat(protos, P3, P4, P5) each unshuffled to S/32.
    """
    b, c_p, a = preds.shape
    g = protos.shape[-1] // 8
    if protos.shape[-2:] != (8 * g, 8 * g) or a != 21 * g * g:
        raise ValueError(
            f"YOLO outputs do not fit a square input of side {32 * g}: protos {tuple(protos.shape)}, {a} anchors"
        )
    parts, start = [F.pixel_unshuffle(protos, 8)], 0
    for factor in (4, 2, 1):  # P3, P4, P5
        n = (factor * g) ** 2
        level = preds[:, :, start : start + n].reshape(b, c_p, factor * g, factor * g)
        parts.append(F.pixel_unshuffle(level, factor))
        start += n
    return torch.cat(parts, dim=1)


def unpack_yolo_outputs(
    embedding: torch.Tensor, num_outputs: int, num_protos: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `pack_yolo_outputs` for one image: [C,g,g] -> (preds [C_p,A], protos [nm,8g,8g])."""
    c = embedding.shape[0]
    if c != num_protos * 64 + num_outputs * 21:
        raise ValueError(f"not a FastSAM embedding: {c} channels, expected {num_protos * 64 + num_outputs * 21}")
    protos = F.pixel_shuffle(embedding[None, : num_protos * 64], 8)[0]
    levels, start = [], num_protos * 64
    for factor in (4, 2, 1):
        n = num_outputs * factor * factor
        levels.append(F.pixel_shuffle(embedding[None, start : start + n], factor)[0].flatten(1))
        start += n
    return torch.cat(levels, dim=1), protos


def yolo_nms(
    preds: torch.Tensor,
    num_classes: int,
    conf_thresh: float,
    iou_thresh: float,
    max_det: int = 300,
    max_nms: int = 30000,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """YOLOv8 NMS of one image (ultralytics `non_max_suppression`, single label per box, class-aware).

    preds: [4+nc+nm, A] (xywh in input pixels, class scores, mask coefficients)
    -> boxes xyxy [K,4], confidence [K] (sorted, decreasing), mask coefficients [K,nm]; K <= max_det.
    Same steps as ultralytics (conf > thresh, top max_nms by confidence, per-class NMS, max_det) without its
    wall-clock limit, which drops detections on a slow CPU.
    """
    x = preds.float().t()  # [A, 4+nc+nm]
    conf, cls = x[:, 4 : 4 + num_classes].max(dim=1)
    keep = conf > conf_thresh
    x, conf, cls = x[keep], conf[keep], cls[keep]
    top = conf.argsort(descending=True)[:max_nms]
    x, conf, cls = x[top], conf[top], cls[top]
    xy, wh = x[:, :2], x[:, 2:4]
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], dim=1)
    order = batched_nms(boxes, conf, cls, iou_thresh)[:max_det]
    return boxes[order], conf[order], x[order, 4 + num_classes :]


def select_masks_by_points(
    contains: torch.Tensor, scores: torch.Tensor, max_per_point: Optional[int] = None
) -> torch.Tensor:
    """FastSAM's point prompt as a selection. contains: Bool[N,M] (point n lies in mask m), scores: [M]
    -> keep Bool[M].

    max_per_point=None keeps every mask that contains at least one (positive) point — ultralytics'
    `FastSAMPredictor.prompt(points=..., labels=1)`; the original FastSAMPrompt.point_prompt merges the same
    set into one mask, which would break SAM-MI's one-mask-per-region use. max_per_point=k keeps, per
    point, only its k highest-scoring masks (k=1: the single most confident mask per point).
    """
    if contains.dim() != 2 or contains.shape[1] != scores.shape[0]:
        raise ValueError(f"contains must be [N_points, M_masks] with M={scores.shape[0]}, got {tuple(contains.shape)}")
    if max_per_point is None or contains.shape[0] == 0:
        return contains.any(dim=0)
    k = min(int(max_per_point), contains.shape[1])
    ranked = torch.where(contains, scores[None].float(), torch.full_like(contains, float("-inf"), dtype=torch.float))
    val, idx = ranked.topk(k, dim=1)  # [N,k]
    keep = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
    keep[idx[torch.isfinite(val)]] = True
    return keep


def _inside_boxes(boxes: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """Pixels (centres ys [h], xs [w], frame pixels) inside boxes xyxy [K,4] -> Bool[K,h,w] (as `crop_mask`)."""
    x1, y1, x2, y2 = (boxes[:, i, None] for i in range(4))
    in_y = (ys[None] >= y1) & (ys[None] < y2)
    in_x = (xs[None] >= x1) & (xs[None] < x2)
    return in_y[:, :, None] & in_x[:, None, :]


class FastSAMPointPrompted(PointPromptedSAM):
    """FastSAM (YOLOv8-seg "everything" model) answering point prompts like FastSAM's own point prompt.

    encode: letterbox (resize longest side, pad bottom-right with YOLO's grey 114 — ultralytics'
    `LetterBox(center=False)`; top-left keeps SAM's frame arithmetic), /255, one forward; the raw head outputs
    (per-anchor boxes / confidences / mask coefficients + mask prototypes) are packed losslessly
    (`pack_yolo_outputs`), so the "everything" pass runs once per batch and the embedding stays opaque.
    generate: YOLO NMS (FastSAM's defaults conf 0.4 via `pred_iou_thresh`, iou 0.9, max_det 300) ->
    masks containing a point (`select_masks_by_points`; a point is in a mask when the bilinear sample of the
    mask logit at the point is > 0 and the point is inside its box — the continuous form of FastSAM's
    `masks[:, y, x]` on retina masks) -> SAM's stability filter (off unless stability_score_thresh > 0)
    -> box NMS at `box_nms_thresh` (score = confidence) -> logits resampled to out_size, cropped to the box
    (retina masks) and thresholded at 0 (sigmoid 0.5). Scores are YOLO confidences, sorted decreasing.
    """

    def __init__(
        self,
        yolo: nn.Module,
        image_size: int,
        iou_thresh: float = 0.9,
        max_det: int = 300,
        max_per_point: Optional[int] = None,
        **kw,
    ) -> None:
        head = yolo.model[-1]
        if not hasattr(head, "nm"):
            raise ValueError(f"FastSAM needs a YOLO segmentation model (Segment head), got head {type(head).__name__}")
        if image_size % _YOLO_STRIDE:
            raise ValueError(f"FastSAM needs image_size divisible by {_YOLO_STRIDE}, got {image_size}")
        super().__init__(yolo, image_size, pixel_mean=(0.0, 0.0, 0.0), pixel_std=(255.0, 255.0, 255.0), **kw)
        self.num_classes, self.num_protos = int(head.nc), int(head.nm)
        self.num_outputs = 4 + self.num_classes + self.num_protos
        self.iou_thresh, self.max_det = float(iou_thresh), int(max_det)
        self.max_per_point = max_per_point

    @torch.no_grad()
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = super().preprocess(images)
        h_in, w_in = self.input_size(*images.shape[-2:])
        pad = 114.0 / 255.0  # YOLO letterbox colour
        x[..., h_in:, :] = pad
        x[..., :, w_in:] = pad
        return x

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        out = self.sam(x)
        first = out[0]  # eval mode: ((preds, protos), extras) from ultralytics' Segment head
        preds, protos = (first[0], first[1]) if isinstance(first, (tuple, list)) else (first, out[1])
        return pack_yolo_outputs(preds, protos)

    def _decode(self, embedding, coords, labels):
        raise NotImplementedError("FastSAM has no prompt decoder; generate selects among everything-mode masks")

    @torch.no_grad()
    def generate(
        self, embedding: torch.Tensor, points: torch.Tensor, image_size: Tuple[int, int], out_size: Tuple[int, int]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Same contract as `PointPromptedSAM.generate` (masks Bool[N_s,h_o,w_o], scores [N_s]); see class doc."""
        h_o, w_o, empty = check_generate_args(embedding, points, out_size)
        dev = embedding.device
        if tuple(embedding.shape[-2:]) != (self.image_size // _YOLO_STRIDE,) * 2:
            raise ValueError(
                f"FastSAM embedding grid {tuple(embedding.shape[-2:])} does not match image_size {self.image_size} "
                f"(expected {self.image_size // _YOLO_STRIDE}x{self.image_size // _YOLO_STRIDE}): encode with this model"
            )
        preds, protos = unpack_yolo_outputs(embedding.float(), self.num_outputs, self.num_protos)
        boxes, conf, coef = yolo_nms(preds, self.num_classes, self.pred_iou_thresh, self.iou_thresh, self.max_det)
        if points.shape[0] == 0 or conf.numel() == 0:
            return empty

        s = self.image_size
        h_in, w_in = self.input_size(int(image_size[0]), int(image_size[1]))
        pts = points_to_input_frame(points.to(dev), image_size, (h_in, w_in))  # [N,2] frame pixels
        # Mask logits are linear in the prototypes, so sampling the prototypes at the points gives the logits there.
        grid = (pts / s * 2 - 1)[None, None]  # [1,1,N,2]
        at_pts = F.grid_sample(protos[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
        point_logits = coef @ at_pts[0, :, 0]  # [K,N]
        px, py = pts[None, :, 0], pts[None, :, 1]
        inside = (px >= boxes[:, :1]) & (px < boxes[:, 2:3]) & (py >= boxes[:, 1:2]) & (py < boxes[:, 3:])  # [K,N]
        contains = (point_logits > self.mask_threshold) & inside
        keep = select_masks_by_points(contains.t(), conf, self.max_per_point)
        boxes, conf, coef = boxes[keep], conf[keep], coef[keep]
        if conf.numel() == 0:
            return empty

        low = (coef @ protos.flatten(1)).view(-1, *protos.shape[-2:])  # [K,s/4,s/4] logits over the padded frame
        side = low.shape[-1]
        centres = (torch.arange(side, device=dev, dtype=torch.float32) + 0.5) * s / side
        low_in_box = low.masked_fill(~_inside_boxes(boxes, centres, centres), -1e4)  # as ultralytics' crop_mask
        crop_h, crop_w = min(side, math.ceil(h_in * side / s)), min(side, math.ceil(w_in * side / s))
        ok = filter_candidates(
            low_in_box[:, :crop_h, :crop_w],
            conf,
            float("-inf"),  # the confidence threshold was applied in yolo_nms
            self.stability_score_thresh,
            self.stability_score_offset,
            self.mask_threshold,
        )
        boxes, conf, low = boxes[ok], conf[ok], low[ok]
        boxes = torch.minimum(boxes.clamp(min=0), boxes.new_tensor([w_in, h_in, w_in, h_in]))  # clip to the image
        order = batched_nms(boxes, conf, torch.zeros_like(conf, dtype=torch.long), self.box_nms_thresh)
        boxes, conf, low = boxes[order], conf[order], low[order]
        masks = logits_to_out_size(low, (h_in, w_in), (s, s), (h_o, w_o)) > self.mask_threshold
        ys = (torch.arange(h_o, device=dev, dtype=torch.float32) + 0.5) * h_in / h_o
        xs = (torch.arange(w_o, device=dev, dtype=torch.float32) + 0.5) * w_in / w_o
        masks &= _inside_boxes(boxes, ys, xs)
        nonempty = masks.flatten(1).any(dim=1)
        return masks[nonempty], conf[nonempty]

    def extra_repr(self) -> str:
        return (
            f"image_size={self.image_size}, conf_thresh={self.pred_iou_thresh}, iou_thresh={self.iou_thresh}, "
            f"max_det={self.max_det}, max_per_point={self.max_per_point}, box_nms_thresh={self.box_nms_thresh}"
        )


def build_fast_sam_model(model_type: str, checkpoint: Optional[str]) -> nn.Module:
    """YOLOv8-seg of FastSAM: "x"/"s" loaded from an ultralytics checkpoint (FastSAM-x.pt / FastSAM-s.pt; a
    pickled model, so only load files you trust), "tiny" = random YOLOv8n-seg with one class.
    checkpoint=None builds the architecture with random weights."""
    if model_type not in FAST_SAM_ARCHS:
        raise ValueError(f"unknown FastSAM model type '{model_type}'; choose 'x' (FastSAM-x.pt), 's' or 'tiny'")
    if model_type != "tiny" and checkpoint is not None:  # before importing/building anything
        require_checkpoint(checkpoint, model_type, "fast_sam", FAST_SAM_CHECKPOINT_URLS[model_type])
    _require_ultralytics()
    if model_type == "tiny" or checkpoint is None:
        from ultralytics.nn.tasks import SegmentationModel

        model = SegmentationModel(FAST_SAM_ARCHS[model_type], nc=1, verbose=False)
    else:
        from ultralytics.nn.tasks import load_checkpoint as load_ultralytics

        model, _ = load_ultralytics(checkpoint, device="cpu")
        if not hasattr(model.model[-1], "nm"):
            raise ValueError(
                f"{checkpoint} is not a YOLO segmentation checkpoint (head {type(model.model[-1]).__name__}); "
                "MODEL.SAM_MI.SAM.CHECKPOINT must point to FastSAM-x.pt or FastSAM-s.pt"
            )
    return model.float().fuse(verbose=False).eval()  # BN folded into convs, as ultralytics' predictor does


@register_mask_generator("fast_sam")
@configurable(from_config=mask_generator_args)
def build_fast_sam_generator(
    model_type: str, checkpoint: str = "", image_size: int = OFFICIAL_IMAGE_SIZE, *, random_init: bool = False,
    sdpa: bool = True, points_per_batch: int = 64, **kw
) -> FastSAMPointPrompted:
    """FastSAM behind `PointPromptedSAM`'s interface. pred_iou_thresh is FastSAM's confidence threshold
    (its default 0.4); stability filtering applies only if stability_score_thresh > 0 (FastSAM has none)."""
    if model_type in ("x", "s") and image_size != OFFICIAL_IMAGE_SIZE:
        raise ValueError(f"FastSAM '{model_type}' runs at image size {OFFICIAL_IMAGE_SIZE} (imgsz), got {image_size}")
    model = build_fast_sam_model(model_type, None if model_type == "tiny" or random_init else checkpoint)
    return FastSAMPointPrompted(model, image_size, points_per_batch=points_per_batch, **kw)
