"""Frozen SAM that decodes masks from sparse point prompts (SAM-MI §3.2, "Text-guided Sparse Point Prompter").

SAM-MI prompts SAM with a few points picked by TSPP instead of SAM's dense 32×32 grid; the rest of SAM's
automatic-mask-generator (AMG) pipeline is kept: every point is one positive prompt, candidates are filtered by
predicted IoU and stability score, deduplicated by box NMS (score = predicted IoU) and binarised at logit 0.

Masks per point (`masks_per_point`). The paper says "each point generates a single mask" (arXiv 2511.20027
Sec. 4.3, Table 9), while AMG keeps SAM's three multimask candidates per point. Options:
- "best" (default, the paper): decode the three multimask candidates and keep the one with the highest
  predicted IoU, then apply the AMG filters to it. This is segment-anything's own recommendation for an
  ambiguous single click (segment_anything/predictor.py, `SamPredictor.predict`: "For ambiguous input prompts
  (such as a single click), this will often produce better masks than a single prediction. If only a single
  mask is needed, the model's predicted quality score can be used to select the best mask"). Selection
  happens before the filters, as in the predictor: a point whose best mask is unstable yields nothing rather
  than a lower-ranked candidate (and only the kept candidate's logits are computed).
- "single": SAM's single-output token (`multimask_output=False`), which the same docstring reserves for
  "non-ambiguous prompts, such as multiple input prompts"; kept for comparison.
- "amg": all three candidates per point, as SamAutomaticMaskGenerator.

Resolution choice (deviation from AMG, on purpose): AMG upsamples every candidate's 256×256 low-res logits to
the full image before filtering, which dominates its runtime and memory. Here the filters, boxes and NMS run on
the LOW-RES logits, cropped to the un-padded image region (for SAM at 1024 the 256×256 map covers the padded
1024² square, so an H×W image keeps ceil(256·h_in/1024) × ceil(256·w_in/1024) of it, h_in×w_in being the
resized image). Only the survivors are resampled — one bilinear sample of the logits straight into `out_size`
(exact geometry through `grid_sample`, instead of SAM's two chained resizes), then thresholded at 0. Stability
scores at low res are coarser by 4× per side than AMG's, so the same thresholds keep slightly different sets;
IoU-based NMS is scale invariant up to rounding of box edges.

Fast paths: `fast_decoder` (on by default) decodes segment-anything's `MaskDecoder` through `FastPointDecoder`
(fast_decoder.py: per-image work shared across prompts and chunks, only the kept candidate's logits and only
the rows/columns of the image region computed; same masks to float rounding); `amp` (off by default: ~1e-2 of
the embedding's range) runs the image encoder under autocast (`fast_attention.amp_dtype`), the embedding is
returned in float32. The encoder's SDPA attention is patched into the model by `apply_sam_fast_path`.
"""

import contextlib
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from segment_anything.utils.amg import batched_mask_to_box
from torch import nn
from torchvision.ops import batched_nms

from .embedding_cache import state_dict_fingerprint
from .fast_attention import amp_dtype
from .fast_decoder import FastPointDecoder, check_fast_decoder, supports_fast_decoder
from .frame_ops import (
    ceil_div,
    check_generate_args,
    filter_candidates,
    logits_to_out_size,
    points_to_input_frame,
    resize_longest_side_shape,
    select_candidates,
)

__all__ = [
    "MASKS_PER_POINT",
    "PointPromptedSAM",
    "select_candidates",
    "resize_longest_side_shape",
    "points_to_input_frame",
    "filter_candidates",
    "logits_to_out_size",
]


#: Options of `PointPromptedSAM(masks_per_point=...)` (module docstring); "best" is the paper's.
MASKS_PER_POINT = ("best", "single", "amg")


class PointPromptedSAM(nn.Module):
    """Frozen SAM (segment-anything `Sam`) decoding masks from point prompts; see the module docstring.

    Subclasses (hq_sam.py, sam2_image.py, mobile_sam.py, fast_sam.py) override `_embed` and `_decode` (and `preserve_aspect` / normalisation) to wrap
    other SAM-like models behind the same `encode` / `generate` interface; the fast decoder is used only by
    this class's own `_decode` (segment-anything's `MaskDecoder`).

    Args:
        sam: a segment_anything `Sam` (or compatible) model; frozen here.
        image_size: side of the square model input (1024 for the official checkpoints).
        points_per_batch: prompts decoded together (memory bound).
        pred_iou_thresh, stability_score_thresh, stability_score_offset, box_nms_thresh: AMG filters.
        masks_per_point: "best" (paper, default), "single" or "amg" (module docstring).
        fast_decoder: decode through `FastPointDecoder` when the decoder is segment-anything's (same outputs
            to float rounding; checked against the original on a tiny input when built).
        amp: autocast the image encoder (bf16 on CPU and on CUDA where supported, else fp16).
        embedding_cache: a `SAMEmbeddingCache` that `encode(..., use_cache=True)` reads and fills.
    """

    #: SAM resizes the longest side and pads; SAM2 stretches to a square (no padding).
    preserve_aspect: bool = True

    def __init__(
        self,
        sam: nn.Module,
        image_size: int,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
        pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
        mask_threshold: float = 0.0,
        masks_per_point: str = "best",
        fast_decoder: bool = True,
        amp: bool = False,
        embedding_cache=None,
    ) -> None:
        super().__init__()
        if points_per_batch < 1:
            raise ValueError(f"points_per_batch must be >= 1, got {points_per_batch}")
        if masks_per_point not in MASKS_PER_POINT:
            raise ValueError(
                f"masks_per_point (MODEL.SAM_MI.SAM.MASKS_PER_POINT) must be one of {MASKS_PER_POINT}, "
                f"got {masks_per_point!r}"
            )
        self.sam = sam
        self.image_size = int(image_size)
        self.points_per_batch = int(points_per_batch)
        self.pred_iou_thresh = float(pred_iou_thresh)
        self.stability_score_thresh = float(stability_score_thresh)
        self.stability_score_offset = float(stability_score_offset)
        self.box_nms_thresh = float(box_nms_thresh)
        self.mask_threshold = float(mask_threshold)
        self.masks_per_point = masks_per_point
        self.amp = bool(amp)
        self.embedding_cache = embedding_cache
        self._weights_fingerprint: Optional[str] = None
        # Plain tensors moved with the module but kept out of the state dict (`sam.` keys stay SAM's own).
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, 3, 1, 1), False)
        for p in self.parameters():
            p.requires_grad_(False)
        self.train(False)
        self._fast: Optional[FastPointDecoder] = None
        decoder = getattr(sam, "mask_decoder", None)
        if fast_decoder and type(self)._decode is PointPromptedSAM._decode and decoder is not None:
            if supports_fast_decoder(decoder):
                check_fast_decoder(decoder, sam.prompt_encoder)
                self._fast = FastPointDecoder(decoder)

    # ------------------------------------------------------------------ frozen / eval always
    def train(self, mode: bool = True) -> "PointPromptedSAM":
        """SAM is frozen: stay in eval mode whatever the parent asks (dropout/BN-free anyway, but be exact)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def multimask_output(self) -> bool:
        """What `_decode` passes to SAM's decoder: three candidates unless masks_per_point is "single"."""
        return self.masks_per_point != "single"

    def input_size(self, h: int, w: int) -> Tuple[int, int]:
        """Size (h_in, w_in) the image occupies inside the square model frame."""
        if self.preserve_aspect:
            return resize_longest_side_shape(h, w, self.image_size)
        return self.image_size, self.image_size

    # ------------------------------------------------------------------ encoder
    @torch.no_grad()
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] float 0-255 RGB -> [B,3,S,S] normalised, resized (antialiased bilinear) and padded."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"encode expects images of shape [B,3,H,W] (RGB, 0-255), got {tuple(images.shape)}")
        h_in, w_in = self.input_size(*images.shape[-2:])
        x = images.to(self.pixel_mean.device, torch.float32)
        if (h_in, w_in) != tuple(x.shape[-2:]):
            x = F.interpolate(x, (h_in, w_in), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.pixel_mean) / self.pixel_std
        return F.pad(x, (0, self.image_size - w_in, 0, self.image_size - h_in))

    def _autocast(self):
        dtype = amp_dtype(self.device) if self.amp else None
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, use_cache: bool = False) -> torch.Tensor:
        """images: [B,3,H,W] float 0-255 RGB -> float32 embeddings [B,C,h',w'] (one encoder pass per batch).

        use_cache: read/fill `embedding_cache` (evaluation only: augmented training crops never repeat); rows
        found in the cache skip the encoder, the others are encoded together and stored.
        """
        if not use_cache or self.embedding_cache is None:
            return self._encode(images)
        keys = [self.embedding_cache.key_for(img, self.weights_fingerprint(), self.cache_tag()) for img in images]
        found = [self.embedding_cache.get(k) for k in keys]
        todo = [i for i, e in enumerate(found) if e is None]
        if todo:
            fresh = self._encode(images[todo])
            for i, emb in zip(todo, fresh):
                self.embedding_cache.put(keys[i], emb)
                found[i] = emb
        return torch.stack([e.to(self.device, torch.float32) for e in found])

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images)
        with self._autocast():
            emb = self._embed(x)
        return emb.float()

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Model input [B,3,S,S] -> embedding [B,C,h',w'] (C may pack extra features for variants)."""
        return self.sam.image_encoder(x)

    def cache_tag(self) -> str:
        """What, besides the weights, makes an embedding: wrapper class, input size, preprocessing, amp."""
        mean = ",".join(f"{v:g}" for v in self.pixel_mean.flatten().tolist())
        std = ",".join(f"{v:g}" for v in self.pixel_std.flatten().tolist())
        return (
            f"{type(self).__name__}|size={self.image_size}|aspect={int(self.preserve_aspect)}|mean={mean}|"
            f"std={std}|amp={amp_dtype(self.device) if self.amp else None}"
        )

    def weights_fingerprint(self) -> str:
        """Hash of SAM's state dict (computed once; SAM is frozen)."""
        if self._weights_fingerprint is None:
            self._weights_fingerprint = state_dict_fingerprint(self.sam)
        return self._weights_fingerprint

    # ------------------------------------------------------------------ decoder
    def _decode(
        self, embedding: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """embedding [1,C,h',w'], coords [n,1,2] input-frame pixels, labels [n,1]
        -> (low-res logits [n,K,l,l] over the padded frame, predicted IoU [n,K]); K = 3 for SAM
        (1 when `multimask_output` is False)."""
        sparse, dense = self.sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        return self.sam.mask_decoder(
            image_embeddings=embedding,
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=self.multimask_output,
        )

    def _fast_decode(self, state, coords: torch.Tensor, labels: torch.Tensor, region: Tuple[int, int]):
        """`_decode` + `select_candidates` through the fast decoder: only the kept candidates' logits, only
        over the top-left `region` (rows, cols) of the embedding grid -> ([n·K', 4·rows, 4·cols], [n·K'])."""
        sparse, _ = self.sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        return self._fast(state, sparse, self.masks_per_point, region)

    @torch.no_grad()
    def generate(
        self,
        embedding: torch.Tensor,
        points: torch.Tensor,
        image_size: Tuple[int, int],
        out_size: Tuple[int, int],
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Masks for one image from point prompts.

        embedding: [C,h',w'] (one row of `encode`); points: [N,2] (x, y) in [0,1] of the image frame;
        image_size: (H, W) of the image given to `encode`; out_size: (h_o, w_o).
        Returns masks Bool[N_s,h_o,w_o] and scores (predicted IoU) [N_s], sorted by decreasing score;
        N_s may be 0 (no points or nothing survives the filters).
        """
        h_o, w_o, empty = check_generate_args(embedding, points, out_size)
        dev = embedding.device
        if points.shape[0] == 0:
            return empty

        h_in, w_in = self.input_size(int(image_size[0]), int(image_size[1]))
        coords = points_to_input_frame(points.to(dev), image_size, (h_in, w_in))
        emb = embedding[None]
        state = region = None
        frame = (self.image_size, self.image_size)  # the part of the model frame the logits cover
        if self._fast is not None:
            # Per-image work once per call, not per chunk; logits only where the image is: the crop below
            # plus one row/column for the bilinear resampling's neighbour (so the result equals the full map's).
            pe = self.sam.prompt_encoder.get_dense_pe()
            dense = self.sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand_as(emb)
            state = self._fast.prepare(emb, pe, dense)
            h_e, w_e = emb.shape[-2:]
            l_h, l_w = 4 * h_e, 4 * w_e  # SAM's low-res logits: 4x the embedding grid
            rows = min(h_e, ceil_div(ceil_div(h_in * l_h, self.image_size) + 1, 4))
            cols = min(w_e, ceil_div(ceil_div(w_in * l_w, self.image_size) + 1, 4))
            region = (rows, cols)
            frame = (4 * rows * self.image_size / l_h, 4 * cols * self.image_size / l_w)
        kept_logits, kept_iou, kept_boxes = [], [], []
        for start in range(0, coords.shape[0], self.points_per_batch):
            chunk = coords[start : start + self.points_per_batch, None, :]  # [n,1,2]: one point per prompt
            labels = torch.ones(chunk.shape[:2], dtype=torch.int, device=dev)  # positive points, as AMG
            if state is not None:
                logits, iou = self._fast_decode(state, chunk, labels, region)
            else:
                logits, iou = self._decode(emb, chunk, labels)
                l_h, l_w = logits.shape[-2:]
                logits, iou = select_candidates(logits, iou, self.masks_per_point)
            logits, iou = logits.float(), iou.float()
            # Crop to the un-padded image region at low res (ceil: keep partly covered border cells).
            crop_h = min(l_h, ceil_div(h_in * l_h, self.image_size))
            crop_w = min(l_w, ceil_div(w_in * l_w, self.image_size))
            cropped = logits[:, :crop_h, :crop_w]
            keep = filter_candidates(
                cropped,
                iou,
                self.pred_iou_thresh,
                self.stability_score_thresh,
                self.stability_score_offset,
                self.mask_threshold,
            )
            kept_logits.append(logits[keep])
            kept_iou.append(iou[keep])
            kept_boxes.append(batched_mask_to_box(cropped[keep] > self.mask_threshold))
        logits, iou, boxes = torch.cat(kept_logits), torch.cat(kept_iou), torch.cat(kept_boxes)
        if iou.numel() == 0:
            return empty
        # NMS over all candidates of the image at once (AMG: after the batch loop), score = predicted IoU.
        order = batched_nms(boxes.float(), iou, torch.zeros_like(iou, dtype=torch.long), self.box_nms_thresh)
        logits, iou = logits[order], iou[order]
        masks = logits_to_out_size(logits, (h_in, w_in), frame, (h_o, w_o))
        masks = masks > self.mask_threshold
        # A mask smaller than one output pixel vanishes at out_size; keep the "no empty masks" promise.
        nonempty = masks.flatten(1).any(dim=1)
        return masks[nonempty], iou[nonempty]

    def extra_repr(self) -> str:
        return (
            f"image_size={self.image_size}, points_per_batch={self.points_per_batch}, "
            f"pred_iou_thresh={self.pred_iou_thresh}, stability_score_thresh={self.stability_score_thresh}, "
            f"stability_score_offset={self.stability_score_offset}, box_nms_thresh={self.box_nms_thresh}, "
            f"masks_per_point={self.masks_per_point!r}, fast_decoder={self._fast is not None}, amp={self.amp}"
        )
