"""Ground truth read and checked the same way in every evaluator (training's check, at evaluation).

detectron2's ``SemSegEvaluator.process`` reads each label map with ``sem_seg_loading_fn`` and feeds
``(num_classes + 1) * pred + gt`` to ``np.bincount``: a label of the wrong size raises a bare broadcast
error, an RGB label a reshape error, and an id beyond the classes either a reshape error or, when the sum
still fits, a count in the wrong cell of the confusion matrix (silently wrong).  The mixin below reads the
label with the project reader and applies :func:`sam_mi.data.validation.check_label` first: the label
must be single-channel, of the prediction's size (the prediction is made at the image's size, the
``height`` / ``width`` the test mapper read from the image file) and hold only ids ``0..num_classes-1``
or the ignore label.
"""
from typing import Dict, List, Optional, Tuple

import numpy as np
from detectron2.evaluation import SemSegEvaluator

from ..data.image_io import read_label
from ..data.validation import check_label

__all__ = ["CheckedGroundTruth", "CheckedSemSegEvaluator", "with_checked_ground_truth"]


class CheckedGroundTruth:
    """Mixin for ``SemSegEvaluator`` subclasses (put it first in the bases).

    ``process`` notes, per label file, its image and the prediction size; the evaluator's
    ``sem_seg_loading_fn`` then reads the file with :func:`read_label` and checks it.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._expected: Dict[str, Tuple[str, Tuple[int, int]]] = {}
        self.sem_seg_loading_fn = self.load_checked_ground_truth

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        self._expected = {}
        for inp, out in zip(inputs, outputs):
            gt_file = self.input_file_to_gt_file[inp["file_name"]]
            self._expected[gt_file] = (inp["file_name"], tuple(out["sem_seg"].shape[-2:]))
        super().process(inputs, outputs)

    def load_checked_ground_truth(self, filename: str, dtype: Optional[np.dtype] = None, **_) -> np.ndarray:
        """Label map [H, W] of ``filename``, checked (see the module docstring)."""
        image_file, size = self._expected.get(filename, (None, None))
        label = check_label(
            read_label(filename),
            filename,
            image_file=image_file,
            image_size=size,
            num_classes=self._num_classes,
            ignore_label=self._ignore_label,
        )
        return label if dtype is None else label.astype(dtype)


class CheckedSemSegEvaluator(CheckedGroundTruth, SemSegEvaluator):
    """detectron2's ``SemSegEvaluator`` with checked ground truth."""


def with_checked_ground_truth(evaluator_class: type) -> type:
    """A subclass of ``evaluator_class`` (a ``SemSegEvaluator``) with :class:`CheckedGroundTruth` mixed in."""
    if issubclass(evaluator_class, CheckedGroundTruth):
        return evaluator_class
    return type(f"Checked{evaluator_class.__name__}", (CheckedGroundTruth, evaluator_class), {})
