"""Whole-image and sliding-window inference, exactly as CAT-Seg evaluates.

Reference: cvlab-kaist/CAT-Seg ``cat_seg/cat_seg_model.py`` (``CATSeg.forward`` at test time and
``CATSeg.inference_sliding_window``) with detectron2's ``ImageList.from_tensors`` and
``sem_seg_postprocess``.  Both paths take a ``predict`` callable that maps 0-255 RGB images [B, 3, H, W] to
class logits [B, T, h, w]; the model normalises and resizes to the CLIP resolution inside
(``DenseCLIP.encode_image_dense``).  Two identities make that equal to CAT-Seg, which normalises first:

* Padding.  CAT-Seg pads the *normalised* image with zeros (``ImageList.from_tensors`` default pad value).
  Padding the 0-255 image with the CLIP pixel mean instead gives exactly the same normalised tensor,
  since (mean - mean) / std = 0 in floating point.
* Resizing.  Bilinear interpolation (align_corners=False, no antialias) is a convex combination of input
  pixels per output pixel, so it commutes with the per-channel affine normalisation
  (x - mean) / std up to float rounding.  Both paths resize the 0-255 image (the 640 canvas, the crops,
  the global view) before normalising, as CAT-Seg's ``inference_sliding_window`` does.

Scores are merged in float32 and classes are processed in chunks of ``CLASS_CHUNK`` (per-class operations
only, so chunking does not change a value): an 847-class vocabulary would otherwise need one 640 x 640 map
per class and view at once.
"""
from typing import Callable, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.stage_timer import stage

__all__ = [
    "CLASS_CHUNK",
    "pad_to_divisible",
    "sem_seg_postprocess",
    "whole_image_inference",
    "sliding_window_views",
    "sliding_window_boxes",
    "merge_sliding_window",
    "sliding_window_inference",
    "whole_image_scores",
]

CLASS_CHUNK = 64

Predictor = Callable[[Tensor], Tensor]


# ----------------------------------------------------------------------------- whole image
def pad_to_divisible(image: Tensor, size_divisibility: int, pad_value: Union[float, Sequence[float], Tensor]) -> Tensor:
    """Pad [C, H, W] at the bottom and right to multiples of ``size_divisibility`` (detectron2's
    ``ImageList.from_tensors`` for one image; no padding when ``size_divisibility`` <= 1).

    ``pad_value`` is a scalar or one value per channel: the CLIP pixel mean in 0-255 reproduces CAT-Seg's
    zero padding of the normalised image (see the module docstring).
    """
    if image.dim() != 3 or not image.is_floating_point():
        raise ValueError(f"image must be a float tensor [C, H, W] (0-255), got {image.dtype} {tuple(image.shape)}")
    c, h, w = image.shape
    if size_divisibility <= 1:
        return image
    s = int(size_divisibility)
    ph, pw = (h + s - 1) // s * s, (w + s - 1) // s * s
    if (ph, pw) == (h, w):
        return image
    value = torch.as_tensor(pad_value, dtype=image.dtype, device=image.device).reshape(-1)
    if value.numel() not in (1, c):
        raise ValueError(f"pad_value must be a scalar or {c} values (one per channel), got {value.numel()}")
    out = value.reshape(-1, 1, 1).expand(c, ph, pw).clone()
    out[:, :h, :w] = image
    return out


def sem_seg_postprocess(scores: Tensor, image_size: Tuple[int, int], out_size: Tuple[int, int]) -> Tensor:
    """detectron2's ``sem_seg_postprocess``: scores [T, h, w] -> [T, *out_size].

    It crops ``scores[:, :H, :W]`` with the *image's* size (H, W) in pixels, although the scores live at the
    logits' resolution, then resizes bilinearly to ``out_size``.  For CAT-Seg the logits map (96 x 96 at
    ViT-B/16 @ 384) is smaller than any evaluated image, so the crop keeps everything and the part of the map
    that saw the padding is stretched into the output along with the image.  Reproduced as is.
    """
    cropped = scores[:, : image_size[0], : image_size[1]]
    return F.interpolate(cropped[None], size=tuple(out_size), mode="bilinear", align_corners=False)[0]


def whole_image_inference(
    predict: Predictor,
    image: Tensor,
    size_divisibility: int,
    pad_value: Union[float, Sequence[float], Tensor],
    out_size: Tuple[int, int],
) -> Tensor:
    """CAT-Seg's whole-image test path for one image -> sigmoid scores [T, *out_size] (float32).

    1. pad the 0-255 image [3, H, W] to a multiple of ``size_divisibility`` (CAT-Seg: 32) with
       ``pad_value`` (the CLIP pixel mean, 0-255) -- see :func:`pad_to_divisible`;
    2. ``predict`` the padded image (it normalises and resizes to the CLIP resolution): logits [1, T, h, w];
    3. sigmoid at the logits' resolution, then :func:`sem_seg_postprocess` with the unpadded image size.
    """
    if image.dim() != 3:
        raise ValueError(f"image must be [3, H, W], got {tuple(image.shape)}")
    image_size = (int(image.shape[-2]), int(image.shape[-1]))
    logits = predict(pad_to_divisible(image, size_divisibility, pad_value)[None])
    if logits.dim() != 4 or logits.shape[0] != 1:
        raise ValueError(f"predict must return logits [1, T, h, w] for one image, got {tuple(logits.shape)}")
    num_classes = logits.shape[1]
    with stage("score_maps"):
        out = torch.empty(num_classes, *out_size, device=logits.device, dtype=torch.float32)
        for start in range(0, num_classes, CLASS_CHUNK):
            probs = logits[0, start : start + CLASS_CHUNK].float().sigmoid()
            out[start : start + probs.shape[0]] = sem_seg_postprocess(probs, image_size, out_size)
    return out


def whole_image_scores(logits: Tensor, out_size: Tuple[int, int]) -> Tensor:
    """Pre-CAT-Seg-protocol whole-image scores: logits [1, T, h, w] upsampled to ``out_size``, then sigmoid.

    Not CAT-Seg's order (it takes the sigmoid first and pads the input, see :func:`whole_image_inference`);
    kept only so callers written against it keep working until they move to :func:`whole_image_inference`.
    """
    num_classes = logits.shape[1]
    out = torch.empty(num_classes, *out_size, device=logits.device, dtype=torch.float32)
    for start in range(0, num_classes, CLASS_CHUNK):
        chunk = logits[:, start : start + CLASS_CHUNK].float()
        out[start : start + chunk.shape[1]] = F.interpolate(
            chunk, size=out_size, mode="bilinear", align_corners=False
        )[0].sigmoid()
    return out


# ----------------------------------------------------------------------------- sliding window
def _stride(window: int, overlap: float, out_res: int) -> int:
    stride = int(window * (1.0 - overlap))  # CAT-Seg: int(kernel * (1 - overlap))
    if stride <= 0 or out_res < window or (out_res - window) % stride:
        raise ValueError(
            f"sliding window does not tile the canvas: OUT_RESOLUTION {out_res}, WINDOW_SIZE {window}, "
            f"stride {stride} (from WINDOW_OVERLAP {overlap}); need (OUT_RESOLUTION - WINDOW_SIZE) to be a "
            "multiple of the stride, e.g. 640 / 384 / 0.333 as in the protocol"
        )
    return stride


def sliding_window_views(image: Tensor, window: int, overlap: float, out_res: int) -> Tuple[Tensor, int]:
    """Cut CAT-Seg's views out of one image [3, H, W] (0-255).

    Crops: the image is resized (aspect not kept) to out_res x out_res and cut into window x window crops
    with stride int(window * (1 - overlap)), row-major (``nn.Unfold`` order).  Global view: the *original*
    image resized to window x window (CAT-Seg resizes ``images[0]``, not the canvas; resampling the canvas
    again would blur it twice).  Returns views [V, 3, window, window] (crops first, global last) and the
    stride.
    """
    if image.dim() != 3:
        raise ValueError(f"image must be [3, H, W], got {tuple(image.shape)}")
    stride = _stride(window, overlap, out_res)
    image = image[None].float()
    canvas = F.interpolate(image, size=(out_res, out_res), mode="bilinear", align_corners=False)
    crops = F.unfold(canvas, kernel_size=window, stride=stride)  # [1, 3*w*w, L]
    crops = crops[0].T.reshape(-1, 3, window, window)
    global_view = F.interpolate(image, size=(window, window), mode="bilinear", align_corners=False)
    return torch.cat([crops, global_view], dim=0), stride


def sliding_window_boxes(
    image_size: Tuple[int, int], window: int, overlap: float, out_res: int
) -> Tensor:
    """Where each view of :func:`sliding_window_views` lies in the original image: boxes [V, 4] float32 as
    (x0, y0, x1, y1) in original pixels (continuous coordinates, the image spans [0, W] x [0, H]), crops in
    ``nn.Unfold`` order then the global view (the whole image).  Lets a caller bring masks computed once on
    the whole image into each view's frame."""
    stride = _stride(window, overlap, out_res)
    h, w = image_size
    starts = torch.arange(0, out_res - window + 1, stride, dtype=torch.float32)
    ys, xs = torch.meshgrid(starts, starts, indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    sx, sy = w / out_res, h / out_res
    crops = torch.stack([xs * sx, ys * sy, (xs + window) * sx, (ys + window) * sy], dim=1)
    whole = torch.tensor([[0.0, 0.0, float(w), float(h)]])
    return torch.cat([crops, whole], dim=0)


def merge_sliding_window(
    logits: Tensor, window: int, stride: int, out_res: int, out_size: Tuple[int, int]
) -> Tensor:
    """Merge per-view logits [V, T, h, w] into sigmoid scores [T, *out_size] (float32), as CAT-Seg.

    Every view's logits are resized to window x window and passed through the sigmoid; crops are folded
    back onto the out_res canvas and divided by how many crops cover each pixel; the global view is resized
    to the canvas; the two are averaged; ``sem_seg_postprocess`` (no crop: the canvas is the image size it
    is given) resizes to ``out_size``.
    """
    num_crops = logits.shape[0] - 1
    num_classes = logits.shape[1]
    ones = torch.ones(1, window * window, num_crops, device=logits.device, dtype=torch.float32)
    count = F.fold(ones, (out_res, out_res), kernel_size=window, stride=stride)  # [1, 1, R, R]
    out = torch.empty(num_classes, *out_size, device=logits.device, dtype=torch.float32)
    for start in range(0, num_classes, CLASS_CHUNK):
        chunk = logits[:, start : start + CLASS_CHUNK].float()
        c = chunk.shape[1]
        probs = F.interpolate(chunk, size=(window, window), mode="bilinear", align_corners=False).sigmoid()
        crops = probs[:num_crops].reshape(num_crops, c * window * window).T[None]  # [1, c*w*w, L]
        folded = F.fold(crops, (out_res, out_res), kernel_size=window, stride=stride) / count
        global_probs = F.interpolate(
            probs[num_crops:], size=(out_res, out_res), mode="bilinear", align_corners=False
        )
        merged = (folded + global_probs) / 2
        out[start : start + c] = sem_seg_postprocess(merged[0], (out_res, out_res), out_size)
    return out


def sliding_window_inference(
    predict: Predictor,
    image: Tensor,
    window: int,
    overlap: float,
    out_res: int,
    out_size: Tuple[int, int],
) -> Tensor:
    """CAT-Seg's sliding-window test path for one image [3, H, W] (0-255) -> scores [T, *out_size].

    ``predict`` maps the views [V, 3, window, window] (0-255, V = crops + 1 global view) to logits
    [V, T, h, w]; see :func:`sliding_window_views` and :func:`merge_sliding_window`.
    """
    views, stride = sliding_window_views(image, window, overlap, out_res)
    logits = predict(views)
    with stage("score_maps"):
        return merge_sliding_window(logits, window, stride, out_res, out_size)
