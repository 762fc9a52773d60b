"""The segmentation loss of stage 2 (Sec. 3.5: L = L_ce + lambda_tspp L_tspp); L_tspp lives in tspp.py."""
import torch
import torch.nn.functional as F
from torch import Tensor


def per_class_bce(logits: Tensor, targets: Tensor, ignore_value: int) -> Tensor:
    """CAT-Seg's loss: logits [B,T,h,w] upsampled to the labels [B,H,W], one-hot targets, mean BCE.

    As in CAT-Seg (cvlab-kaist/CAT-Seg cat_seg/cat_seg_model.py, ``forward``), ignored pixels are not
    excluded: their target row is all zeros (negative for every class).
    """
    logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    num_classes = logits.shape[1]
    valid = targets != ignore_value
    onehot = F.one_hot(torch.where(valid, targets, 0), num_classes).permute(0, 3, 1, 2).float()
    onehot = onehot * valid[:, None]
    return F.binary_cross_entropy_with_logits(logits, onehot)
