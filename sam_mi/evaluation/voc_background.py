"""PASCAL VOC-20b ("PAS-20b"): VOC's 20 classes plus background, scored from a 59-prompt vocabulary.

CAT-Seg's protocol (cvlab-kaist/CAT-Seg eval.sh) prompts the model with ``datasets/voc20b.json``: the 20
VOC classes first, then 39 PASCAL-Context names that stand for the background.  Every prediction with
index >= 20 is counted as class 20 ("background") before the confusion matrix; its ``VOCbEvaluator`` does
it with ``np.int``, which numpy >= 1.24 no longer has.  Here the same rule is applied on the scores
instead of the argmax:

    scores'[:B] = scores[:B],   scores'[B] = max_{t >= B} scores[t]          (B = background index)

``argmax(scores') == min(argmax(scores), B)`` exactly (ties included: argmax takes the first maximum on
both sides), so detectron2's own ``SemSegEvaluator.process`` (confusion matrix, boundary IoU, RLE
predictions) is reused unchanged and nothing is re-implemented per pixel.
"""
from typing import Dict, List

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import SemSegEvaluator

from .ground_truth import CheckedGroundTruth

__all__ = ["merge_background_scores", "map_background_predictions", "VOCbEvaluator"]


def merge_background_scores(scores: torch.Tensor, background_index: int) -> torch.Tensor:
    """Collapse the channels ``background_index..T-1`` into one by their maximum.

    Args:
        scores: Tensor[T, H, W] class scores over the prompt vocabulary (T >= background_index + 1).
        background_index: first channel that counts as background (20 for VOC-20b).
    Returns:
        Tensor[background_index + 1, H, W] whose argmax is ``min(argmax(scores), background_index)``.
    """
    if scores.dim() != 3:
        raise ValueError(f"scores must be [T, H, W], got shape {tuple(scores.shape)}")
    if not 0 <= background_index < scores.shape[0]:
        raise ValueError(
            f"background index {background_index} needs at least {background_index + 1} score channels, "
            f"got {scores.shape[0]}: set the dataset's metadata `vocabulary` to the prompts the model sees"
        )
    background = scores[background_index:].amax(dim=0, keepdim=True)
    return torch.cat([scores[:background_index], background], dim=0)


def map_background_predictions(pred: np.ndarray, background_index: int) -> np.ndarray:
    """The VOC-20b rule on label maps: every predicted index >= ``background_index`` becomes it."""
    return np.minimum(pred, background_index)


class VOCbEvaluator(CheckedGroundTruth, SemSegEvaluator):
    """detectron2's ``SemSegEvaluator`` with the VOC-20b background rule (and checked ground truth).

    The background index is the metadata's ``background_class`` when set, else the last of
    ``stuff_classes`` (VOC-20b registers 20 classes + "background", so 20).
    """

    def __init__(self, dataset_name: str, distributed: bool = True, output_dir: str = None):
        super().__init__(dataset_name, distributed=distributed, output_dir=output_dir)
        meta = MetadataCatalog.get(dataset_name)
        self._background_index = int(meta.get("background_class", self._num_classes - 1))
        if self._background_index != self._num_classes - 1:
            raise ValueError(
                f"{dataset_name}: the background class must be the last of stuff_classes "
                f"(index {self._num_classes - 1}), got background_class={self._background_index}"
            )

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        merged = [
            {**output, "sem_seg": merge_background_scores(output["sem_seg"], self._background_index)}
            for output in outputs
        ]
        super().process(inputs, merged)
