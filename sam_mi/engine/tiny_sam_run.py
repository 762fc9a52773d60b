"""Train (or reuse) the tiny SAM on registered splits, measure it and save it: tools/train_tiny_sam.py's logic,
also the demo's first stage (sam_mi/engine/demo.py), where it runs in a worker process.

The checkpoint is segment-anything's format (sam_pretraining.save_sam_checkpoint) with a JSON beside it that
records the settings, the training summary and the quality report; a later call with the same settings and
``reuse`` loads it instead of training again.
"""
import json
import os
from typing import Callable, Dict, Optional

import torch
from detectron2.data import DatasetCatalog

from .sam_pretraining import TinySAMSchedule, load_region_images, save_sam_checkpoint, train_tiny_sam
from .sam_quality import amg_threshold_sweep, point_prompt_quality

__all__ = ["train_or_reuse_tiny_sam", "split_records"]


def split_records(name: str):
    """The records of a registered split, or a clear error naming what to pass instead."""
    try:
        return DatasetCatalog.get(name)
    except KeyError as e:
        raise ValueError(f"dataset '{name}' is not registered ({e}); pass a registered split") from None


def train_or_reuse_tiny_sam(
    train_split: str,
    val_split: str,
    output: str,
    schedule: TinySAMSchedule = TinySAMSchedule(),
    reuse: bool = False,
    eval_period: int = 0,
    threads: int = 0,
    log: Optional[Callable[[str], None]] = print,
) -> Dict:
    """Train `build_tiny_sam` with SAM's recipe on ``train_split`` (or reuse ``output`` when ``reuse`` and its
    JSON records the same settings), then measure it on ``val_split`` and save it; returns the report.

    Report: {"settings", "training" (sam_pretraining.train_tiny_sam's summary), "quality" and "swapped_quality"
    (sam_quality.point_prompt_quality with the prompts as given and with x and y swapped: the gap between the
    two is how much the masks follow the prompt), "amg" (masks per image surviving AMG's filters, a threshold
    sweep), "reused"}. ``eval_period`` > 0 logs both validation IoUs every that many iterations.
    ``threads`` > 0 sets torch's thread count (the demo's workers use one).
    """
    if threads:
        torch.set_num_threads(threads)
    say = log or (lambda message: None)
    train = load_region_images(split_records(train_split), min_area=schedule.min_region_area)
    val = load_region_images(split_records(val_split), min_area=schedule.min_region_area)
    settings = {"schedule": vars(schedule), "train": [train_split, len(train)], "val": [val_split, len(val)]}

    meta_path = os.path.splitext(output)[0] + ".json"
    report = None
    if reuse and os.path.isfile(output) and os.path.isfile(meta_path):
        with open(meta_path) as f:
            previous = json.load(f)
        complete = all(key in previous for key in ("training", "quality", "swapped_quality", "amg"))
        if complete and previous.get("settings") == json.loads(json.dumps(settings)):
            report = previous
    if report is not None:
        say(f"reusing {output} (same schedule and datasets)")
        report["reused"] = True
        return report

    def track(it: int, model: torch.nn.Module) -> None:
        q = point_prompt_quality(model, val, schedule.image_size, seed=schedule.seed)
        t = point_prompt_quality(model, val, schedule.image_size, seed=schedule.seed, swap_xy=True)
        say(f"  validation after {it}: best-of-3 IoU {q['best_iou']:.3f} (x/y swapped {t['best_iou']:.3f})")

    period = eval_period if eval_period > 0 else max(1, schedule.iters // 6)
    sam, training = train_tiny_sam(train, schedule, log=log, log_period=period,
                                   on_period=track if eval_period > 0 else None)
    report = {
        "settings": settings,
        "training": training,
        "quality": point_prompt_quality(sam, val, schedule.image_size, seed=schedule.seed),
        "swapped_quality": point_prompt_quality(sam, val, schedule.image_size, seed=schedule.seed, swap_xy=True),
        "amg": amg_threshold_sweep(sam, val, schedule.image_size),
    }
    save_sam_checkpoint(sam, output, report)
    report["reused"] = False
    return report

