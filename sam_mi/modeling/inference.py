"""Whole-image and sliding-window inference (CAT-Seg's evaluation protocol, catseg.md Sec. 2.5)."""
from typing import Callable, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

# How many classes are upsampled / folded at once: bounds memory for 847-class vocabularies
# (one 640x640 float map per class per view otherwise).
CLASS_CHUNK = 64


def sliding_window_views(image: Tensor, window: int, overlap: float, out_res: int) -> Tuple[Tensor, int]:
    """Cut the protocol's views out of one image.

    The image [3, H, W] is resized (aspect not kept, as CAT-Seg) to out_res x out_res, then cut into
    window x window crops with stride int(window * (1 - overlap)), plus one global view (the whole resized
    image at window x window). Returns views [V, 3, window, window] (crops first, global last) and the stride.
    """
    stride = int(window * (1.0 - overlap))
    if stride <= 0 or out_res < window or (out_res - window) % stride:
        raise ValueError(
            f"sliding window does not tile the canvas: OUT_RESOLUTION {out_res}, WINDOW_SIZE {window}, "
            f"stride {stride} (from WINDOW_OVERLAP {overlap}); need (OUT_RESOLUTION - WINDOW_SIZE) to be a "
            "multiple of the stride, e.g. 640 / 384 / 0.333 as in the protocol"
        )
    resized = F.interpolate(image[None], size=(out_res, out_res), mode="bilinear", align_corners=False)
    crops = F.unfold(resized, kernel_size=window, stride=stride)  # [1, 3*w*w, L]
    crops = crops[0].T.reshape(-1, 3, window, window)
    global_view = F.interpolate(resized, size=(window, window), mode="bilinear", align_corners=False)
    return torch.cat([crops, global_view], dim=0), stride


def merge_sliding_window(
    logits: Tensor, window: int, stride: int, out_res: int, out_size: Tuple[int, int]
) -> Tensor:
    """Merge per-view logits [V, T, h, w] into class scores [T, H, W] at ``out_size``.

    Scores are sigmoid probabilities: crops are folded back onto the out_res canvas and divided by how many
    crops cover each pixel; the global view is upsampled to the canvas; the two are averaged (CAT-Seg).
    Classes are processed in chunks of CLASS_CHUNK to bound memory.
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
        out[start : start + c] = F.interpolate(merged, size=out_size, mode="bilinear", align_corners=False)[0]
    return out


def whole_image_scores(logits: Tensor, out_size: Tuple[int, int]) -> Tensor:
    """Logits [1, T, h, w] of a whole-image forward -> sigmoid scores [T, H, W] at ``out_size`` (chunked)."""
    num_classes = logits.shape[1]
    out = torch.empty(num_classes, *out_size, device=logits.device, dtype=torch.float32)
    for start in range(0, num_classes, CLASS_CHUNK):
        chunk = logits[:, start : start + CLASS_CHUNK].float()
        out[start : start + chunk.shape[1]] = F.interpolate(
            chunk, size=out_size, mode="bilinear", align_corners=False
        )[0].sigmoid()
    return out


def sliding_window_inference(
    predict: Callable[[Tensor], Tensor],
    image: Tensor,
    window: int,
    overlap: float,
    out_res: int,
    out_size: Tuple[int, int],
) -> Tensor:
    """Run ``predict`` (views [V,3,win,win] -> logits [V,T,h,w]) over the protocol's views of ``image``."""
    views, stride = sliding_window_views(image, window, overlap, out_res)
    return merge_sliding_window(predict(views), window, stride, out_res, out_size)
