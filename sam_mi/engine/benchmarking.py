"""Configs and inputs shared by the benchmark tools (tools/benchmark_latency.py, tools/benchmark_memory.py).

``--random-weights`` runs a config's real architectures without any checkpoint: CLIP is built by open_clip
without pretrained weights and SAM by the model's own builder with ``MODEL.SAM_MI.SAM.RANDOM_INIT`` (at any
``IMAGE_SIZE`` divisible by 16, e.g. 512 on CPUs). A random SAM's masks pass none of its filters, so
``permissive_filters`` turns the predicted-IoU and stability thresholds off (NMS stays, and keeps about one of a
random SAM's near-duplicate masks; MODEL.SAM_MI.SAM.BOX_NMS_THRESH 1.0 passes them all, see
tools/benchmark_latency.py). An untrained TSPP head's point count is arbitrary, so without weights its maps are
rescaled to ``expected_points`` (``MODEL.SAM_MI.TSPP.CALIBRATE_POINTS``; 41 = the paper's A-150
average, Table 6).
"""
import os
from typing import List, Optional, Sequence

import torch
from detectron2.config import CfgNode, get_cfg

from ..config import add_sam_mi_config
from ..data.vocabulary import VocabularyError, load_vocabulary_json, resolve_vocabulary

__all__ = ["benchmark_cfg", "vocabulary_from_spec", "random_image"]


def benchmark_cfg(
    config_file: str,
    opts: Sequence,
    device: Optional[str] = None,
    random_weights: bool = False,
    sam_image_size: Optional[int] = None,
    permissive_filters: bool = False,
    expected_points: float = 41.0,
) -> CfgNode:
    """The frozen config a benchmark builds its model from (module docstring for the switches).

    Raises:
        ValueError: ``sam_image_size`` without ``random_weights`` (official checkpoints run at 1024).
    """
    cfg = get_cfg()
    add_sam_mi_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if random_weights:
        cfg.MODEL.WEIGHTS = ""
        cfg.MODEL.SAM_MI.CLIP.PRETRAINED = ""
        cfg.MODEL.SAM_MI.SAM.RANDOM_INIT = True
        if sam_image_size:
            cfg.MODEL.SAM_MI.SAM.IMAGE_SIZE = int(sam_image_size)
    elif sam_image_size:
        raise ValueError("--sam-image-size needs --random-weights (official checkpoints run at 1024)")
    if permissive_filters:
        cfg.MODEL.SAM_MI.SAM.PRED_IOU_THRESH = -1e9
        cfg.MODEL.SAM_MI.SAM.STABILITY_SCORE_THRESH = 0.0
    if not cfg.MODEL.WEIGHTS:
        cfg.MODEL.SAM_MI.TSPP.CALIBRATE_POINTS = float(expected_points)
    cfg.freeze()
    return cfg


def vocabulary_from_spec(spec: str) -> List[str]:
    """Class names from ``spec``: a registered dataset (its prompts, sam_mi/data/vocabulary.py), a JSON file
    holding a list of names, or a positive integer N (N synthetic names "class 0" ... "class N-1").

    Raises:
        VocabularyError: naming ``spec`` when it is none of these.
    """
    spec = str(spec)
    if spec.isdigit():
        if int(spec) < 1:
            raise VocabularyError(f"vocabulary {spec!r}: a synthetic vocabulary needs at least one class")
        return [f"class {i}" for i in range(int(spec))]
    if os.path.isfile(spec):
        return load_vocabulary_json(spec)
    return resolve_vocabulary(spec)


def random_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A uint8 RGB image [3, height, width] of uniform noise, the same for a given seed."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), generator=gen, dtype=torch.uint8)
