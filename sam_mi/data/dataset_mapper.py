"""Training mapper for semantic segmentation (CAT-Seg's / Mask2Former's ``MaskFormerSemanticDatasetMapper``).

Pipeline (CAT-Seg, catseg.md Sec. 1): ResizeShortestEdge(MIN_SIZE_TRAIN, MAX_SIZE_TRAIN, sampling) ->
RandomCrop_CategoryAreaConstraint(INPUT.CROP.*) -> ColorAugSSD (if enabled) -> RandomFlip -> pad
bottom/right (image 128, label ignore).

Test time uses detectron2's own ``DatasetMapper(cfg, is_train=False)`` (ResizeShortestEdge with
MIN_SIZE_TEST / MAX_SIZE_TEST; the evaluator reads the GT files itself).
"""
import copy
import math
from typing import Any, Dict, List, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

__all__ = ["SemanticDatasetMapper", "build_train_augmentations"]


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

    Bad input: images in any PIL mode (grayscale, palette, RGBA, CMYK) are converted exactly as
    detectron2's ``read_image(file, format=image_format)`` does (PIL ``convert``; RGBA loses its alpha).
    A label map that is not single-channel, or whose size differs from its image, raises a ValueError
    naming both files.
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
    ):
        if not is_train:
            raise ValueError(
                "SemanticDatasetMapper is the training mapper; for evaluation use "
                "detectron2.data.DatasetMapper(cfg, is_train=False)"
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

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict[str, Any]:
        ignore_label = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        if len(cfg.DATASETS.TRAIN) > 0:
            # the training set's own ignore value (all CAT-Seg training data uses 255)
            ignore_label = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("ignore_label", ignore_label)
        return {
            "is_train": is_train,
            "augmentations": build_train_augmentations(cfg, ignore_label),
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": ignore_label,
            "size_divisibility": cfg.MODEL.SAM_MI.INPUT.SIZE_DIVISIBILITY,
        }

    def _read(self, dataset_dict: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray]:
        if "sem_seg_file_name" not in dataset_dict:
            raise ValueError(
                f"record for {dataset_dict.get('file_name')!r} has no 'sem_seg_file_name'; the training mapper "
                "needs semantic labels (register the split with sam_mi.data.datasets.register_split)"
            )
        image_file, label_file = dataset_dict["file_name"], dataset_dict["sem_seg_file_name"]
        image = utils.read_image(image_file, format=self.image_format)
        # no format: keep the stored ids (uint8 PNG, palette PNG indices, uint16 TIFF)
        label = utils.read_image(label_file)
        if label.ndim == 3 and label.shape[2] == 1:
            label = label[:, :, 0]
        if label.ndim != 2:
            raise ValueError(
                f"label map {label_file!r} has shape {label.shape}; expected a single-channel image of class "
                f"ids for {image_file!r} (colour-coded masks must be converted by a datasets/prepare_*.py script)"
            )
        if label.shape != image.shape[:2]:
            raise ValueError(
                f"label map {label_file!r} is {label.shape[1]}x{label.shape[0]} (WxH) but its image "
                f"{image_file!r} is {image.shape[1]}x{image.shape[0]}; re-run the dataset's preparation script"
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
