"""Ground-truth checks shared by the training mapper and the evaluators.

One function, :func:`check_label`, decides whether a label map can be used with its image and its
vocabulary, so that ``tools/train_net.py`` (training and ``--eval-only``) and ``tools/eval_all.py`` reject
the same files with the same message (naming the files) instead of, at evaluation, an AssertionError or a
numpy broadcast error deep inside detectron2's ``SemSegEvaluator``.
"""
from typing import Optional, Tuple

import numpy as np

from .image_io import read_label

__all__ = ["GroundTruthError", "check_label", "read_checked_label"]

_PREPARE_HINT = "re-run the dataset's preparation script (datasets/README.md)"


class GroundTruthError(ValueError):
    """A label map that does not fit its image or its vocabulary; the message names the file(s)."""


def check_label(
    label: np.ndarray,
    label_file: str,
    *,
    image_file: Optional[str] = None,
    image_size: Optional[Tuple[int, int]] = None,
    num_classes: Optional[int] = None,
    ignore_label: Optional[int] = None,
) -> np.ndarray:
    """Validate a label map read by :func:`sam_mi.data.image_io.read_label`; return it as [H, W].

    Args:
        label: [H, W] or [H, W, C] array of stored values.
        label_file / image_file: names for the message.
        image_size: (H, W) the label must have (its image's size), or None to skip.
        num_classes: ids must lie in ``0..num_classes-1`` or equal ``ignore_label``; None to skip.
    Raises:
        GroundTruthError naming the file for: several channels (a colour-coded RGB mask), non-integer
        values, a size different from the image's, an id beyond the vocabulary that is not the ignore label.
    """
    if label.ndim == 3 and label.shape[2] == 1:
        label = label[:, :, 0]
    if label.ndim != 2:
        channels = label.shape[2] if label.ndim == 3 else label.ndim
        what = "an RGB (colour-coded) image" if label.ndim == 3 and channels in (3, 4) else f"shape {label.shape}"
        raise GroundTruthError(
            f"label map {label_file!r} is {what}; expected a single-channel image of class ids"
            + (f" for {image_file!r}" if image_file else "")
            + " (colour-coded masks must be converted to ids by a datasets/prepare_*.py script)"
        )
    if not np.issubdtype(label.dtype, np.integer):
        raise GroundTruthError(
            f"label map {label_file!r} holds {label.dtype} values; class ids must be integers "
            "(8-bit PNG, or 16-bit PNG/TIFF for more than 255 classes)"
        )
    if image_size is not None and tuple(label.shape) != tuple(image_size):
        raise GroundTruthError(
            f"label map {label_file!r} is {label.shape[1]}x{label.shape[0]} (WxH) but its image "
            f"{image_file or '(unnamed)'!r} is {image_size[1]}x{image_size[0]}; {_PREPARE_HINT}"
        )
    if num_classes is not None:
        bad = (label < 0) | (label >= num_classes)
        if ignore_label is not None:
            bad &= label != ignore_label
        if bad.any():
            ids = np.unique(label[bad])
            shown = ", ".join(str(int(i)) for i in ids[:10]) + (", ..." if len(ids) > 10 else "")
            raise GroundTruthError(
                f"label map {label_file!r} holds class id(s) {shown} ({int(bad.sum())} pixels) but the "
                f"vocabulary has {num_classes} classes (ids 0..{num_classes - 1}) and the ignore label is "
                f"{ignore_label}; is it the label map of another dataset, or was the wrong vocabulary given? "
                f"{_PREPARE_HINT}"
            )
    return label


def read_checked_label(label_file: str, **checks) -> np.ndarray:
    """:func:`read_label` then :func:`check_label` (same keyword arguments)."""
    return check_label(read_label(label_file), label_file, **checks)
