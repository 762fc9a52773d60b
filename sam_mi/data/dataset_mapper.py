"""Training mapper for semantic segmentation (CAT-Seg's / Mask2Former's ``MaskFormerSemanticDatasetMapper``).

Pipeline (cvlab-kaist/CAT-Seg cat_seg/data/dataset_mappers/mask_former_semantic_dataset_mapper.py):
ResizeShortestEdge(MIN_SIZE_TRAIN, MAX_SIZE_TRAIN, sampling) ->
RandomCrop_CategoryAreaConstraint(INPUT.CROP.*) -> ColorAugSSD (if enabled) -> RandomFlip -> pad
bottom/right (image 128, label ignore).

Test time: :class:`EvalDatasetMapper`, detectron2's ``DatasetMapper(cfg, is_train=False)``
(ResizeShortestEdge with MIN_SIZE_TEST / MAX_SIZE_TEST) reading through the project's image reader; the
evaluator reads the GT files itself (``sam_mi.evaluation.build``).

Both mappers read images with :func:`sam_mi.data.image_io.read_image` (16-bit and float modes handled,
the file named on any error) and the training mapper checks labels with
:func:`sam_mi.data.validation.check_label`, the check the evaluators apply too.
"""
import copy
import math
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import DatasetMapper, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .image_io import read_image, read_label
from .validation import read_checked_label
from .vocabulary import resolve_vocabulary

__all__ = ["SemanticDatasetMapper", "EvalDatasetMapper", "build_train_augmentations"]


def build_train_augmentations(cfg, ignore_label: int) -> List[Union[T.Augmentation, T.Transform]]:
    """The augmentation list of CAT-Seg's training mapper, from detectron2's INPUT.* keys and
    ``MODEL.SAM_MI.INPUT.{COLOR_AUG_SSD, SINGLE_CATEGORY_MAX_AREA}``."""
    augs: List[Union[T.Augmentation, T.Transform]] = [
        T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)
    ]
    if cfg.INPUT.CROP.ENABLED:
        augs.append(
            T.RandomCrop_CategoryAreaConstraint(
                cfg.INPUT.CROP.TYPE,
                cfg.INPUT.CROP.SIZE,
                cfg.MODEL.SAM_MI.INPUT.SINGLE_CATEGORY_MAX_AREA,
                ignore_label,
            )
        )
    if cfg.MODEL.SAM_MI.INPUT.COLOR_AUG_SSD:
        # deferred: detectron2 keeps the SSD colour augmentation in its PointRend project package
        from detectron2.projects.point_rend import ColorAugSSDTransform

        augs.append(ColorAugSSDTransform(img_format=cfg.INPUT.FORMAT))
    augs.append(T.RandomFlip())
    return augs


class SemanticDatasetMapper:
    """Maps a record ``{"file_name", "sem_seg_file_name", ...}`` to a training sample.

    Output (docs/CONTRACTS.md): the record plus ``"image"`` uint8 Tensor[3, H, W] (RGB),
    ``"sem_seg"`` int64 Tensor[H, W] (ignore = ``ignore_label``), ``"height"`` / ``"width"`` (size of the
    image file before augmentation). H and W are padded up to multiples of ``size_divisibility``.

    Padding (a choice): Mask2Former/CAT-Seg pad *to* ``size_divisibility`` (``size_div - size``), which
    equals padding to the next multiple whenever the image is at most ``size_divisibility`` — always the
    case with CAT-Seg's 384 crop and SIZE_DIVISIBILITY 384 — but silently *crops* a larger image (negative
    padding). Here we pad to the next multiple: identical in CAT-Seg's setting, and never drops pixels.

    Bad input: images are read by :func:`sam_mi.data.image_io.read_image` (8-bit modes converted as
    detectron2 does, 16-bit scaled to 8 bits, float rejected, the file named on any error).  A label map
    that is not single-channel, whose size differs from its image, or that holds an id beyond the training
    vocabulary (``num_classes``) other than the ignore label raises a ``GroundTruthError`` naming the files.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[Union[T.Augmentation, T.Transform]],
        image_format: str = "RGB",
        ignore_label: int = 255,
        size_divisibility: int = -1,
        num_classes: Optional[int] = None,
    ):
        if not is_train:
            raise ValueError(
                "SemanticDatasetMapper is the training mapper; for evaluation use "
                "sam_mi.data.EvalDatasetMapper(cfg) (detectron2's DatasetMapper with the project's image reader)"
            )
        if image_format != "RGB":
            raise ValueError(
                f"INPUT.FORMAT must be 'RGB' (CLIP and SAM take RGB images, docs/CONTRACTS.md), got {image_format!r}"
            )
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict[str, Any]:
        ignore_label = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        num_classes = None
        if len(cfg.DATASETS.TRAIN) > 0:
            # the training set's own ignore value (all CAT-Seg training data uses 255)
            ignore_label = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("ignore_label", ignore_label)
            # label ids index the training vocabulary (the model's output channels)
            num_classes = len(resolve_vocabulary(cfg.DATASETS.TRAIN[0], cfg.MODEL.SAM_MI.VOCABULARY_JSON))
        return {
            "is_train": is_train,
            "augmentations": build_train_augmentations(cfg, ignore_label),
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": ignore_label,
            "size_divisibility": cfg.MODEL.SAM_MI.INPUT.SIZE_DIVISIBILITY,
            "num_classes": num_classes,
        }

    def _read(self, dataset_dict: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray]:
        if "sem_seg_file_name" not in dataset_dict:
            raise ValueError(
                f"record for {dataset_dict.get('file_name')!r} has no 'sem_seg_file_name'; the training mapper "
                "needs semantic labels (register the split with sam_mi.data.datasets.register_split)"
            )
        image_file, label_file = dataset_dict["file_name"], dataset_dict["sem_seg_file_name"]
        image = read_image(image_file, format=self.image_format)
        # the stored ids (uint8 PNG, palette PNG indices, uint16 TIFF), checked against image and vocabulary
        label = read_checked_label(
            label_file,
            image_file=image_file,
            image_size=image.shape[:2],
            num_classes=self.num_classes,
            ignore_label=self.ignore_label,
        )
        # sets height/width, or checks them against the record when present
        utils.check_image_size(dataset_dict, image)
        return image, label

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        dataset_dict = copy.deepcopy(dataset_dict)
        image, label = self._read(dataset_dict)
        # float64 like Mask2Former: detectron2 resizes non-uint8 maps with torch (nearest), which also
        # covers uint16 TIFF labels; ids are exact in float64.
        aug_input = T.AugInput(image, sem_seg=label.astype(np.float64))
        self.augmentations(aug_input)
        image_t = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        sem_seg_t = torch.as_tensor(aug_input.sem_seg.astype(np.int64))
        if self.size_divisibility > 0:
            h, w = image_t.shape[-2:]
            pad_h = math.ceil(h / self.size_divisibility) * self.size_divisibility - h
            pad_w = math.ceil(w / self.size_divisibility) * self.size_divisibility - w
            image_t = F.pad(image_t, (0, pad_w, 0, pad_h), value=128)
            sem_seg_t = F.pad(sem_seg_t, (0, pad_w, 0, pad_h), value=self.ignore_label)
        dataset_dict["image"] = image_t.contiguous()
        dataset_dict["sem_seg"] = sem_seg_t.contiguous()
        return dataset_dict


class EvalDatasetMapper(DatasetMapper):
    """detectron2's test-time ``DatasetMapper(cfg, is_train=False)`` reading images with the project reader.

    Output: the record plus ``"image"`` uint8 Tensor[3, H, W] (resized by MIN_SIZE_TEST / MAX_SIZE_TEST)
    and ``"height"`` / ``"width"`` (the image file's size: predictions are made at that size).  Ground
    truth is read by the evaluators (which check it), so ``sem_seg_file_name`` is dropped; only the oracle
    diagnostic (MODEL.SAM_MI.SAM.ORACLE_MASKS) gets ``"sem_seg"`` as well, resized like the image (nearest).
    """

    def __init__(self, cfg, is_train: bool = False):
        if is_train:
            raise ValueError("EvalDatasetMapper is the test-time mapper; for training use SemanticDatasetMapper")
        if cfg.INPUT.FORMAT != "RGB":
            raise ValueError(
                "INPUT.FORMAT must be 'RGB' (CLIP and SAM take RGB images, docs/CONTRACTS.md), "
                f"got {cfg.INPUT.FORMAT!r}"
            )
        super().__init__(cfg, is_train=False)
        sam_mi = cfg.MODEL.get("SAM_MI")  # a plain detectron2 config has none: labels are not kept
        self.keep_labels = bool(sam_mi is not None and sam_mi.SAM.ORACLE_MASKS)

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)  # sets height/width, or checks them against the record
        label = None
        if self.keep_labels and "sem_seg_file_name" in dataset_dict:
            label = read_label(dataset_dict["sem_seg_file_name"]).astype(np.float64)  # exact ids, nearest resize
        aug_input = T.AugInput(image, sem_seg=label)
        self.augmentations(aug_input)
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        if label is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(aug_input.sem_seg.astype(np.int64))
        dataset_dict.pop("sem_seg_file_name", None)
        dataset_dict.pop("annotations", None)
        return dataset_dict
