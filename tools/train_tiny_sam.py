#!/usr/bin/env python
r"""Train the tiny SAM with SAM's recipe on a semantic-segmentation set, save it, report its quality.

    # on the synthetic set (generated under --dataset-root if missing)
    python tools/train_tiny_sam.py --dataset-root datasets --output output/tiny_sam/sam_tiny.pth
    # then use it like SAM-H (the SAM builder must load tiny checkpoints too):
    #   MODEL.SAM_MI.SAM.MODEL_TYPE tiny MODEL.SAM_MI.SAM.IMAGE_SIZE 128 \
    #   MODEL.SAM_MI.SAM.CHECKPOINT output/tiny_sam/sam_tiny.pth

Writes ``<output>`` (a plain `Sam` state dict, segment-anything's checkpoint format) and
``<output minus .pth>.json`` (schedule, training time, quality), both atomically. With ``--reuse`` an
existing checkpoint whose JSON records the same schedule and datasets is kept and only evaluated.
Quality: single-point IoU on the validation regions (best of 3 masks, highest predicted IoU) and masks per
image surviving SAM's automatic-generation filters for a 32x32 grid (sam_mi/engine/sam_quality.py).
"""

import argparse
import json
import os
import sys
import time

import torch
from detectron2.data import DatasetCatalog

import sam_mi  # noqa: F401  (registers the datasets)
from sam_mi.data.synthetic import generate_synthetic_stuff
from sam_mi.engine.sam_pretraining import (
    TinySAMSchedule,
    load_region_images,
    save_sam_checkpoint,
    train_tiny_sam,
)
from sam_mi.engine.sam_quality import AMG_DEFAULTS, amg_threshold_sweep, point_prompt_quality
from sam_mi.modeling.sam import build_tiny_sam, load_checkpoint


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-root", default="", help="dataset root (default: $DETECTRON2_DATASETS or datasets)")
    parser.add_argument("--train", default="synthetic_stuff_train_sem_seg", help="registered training split")
    parser.add_argument("--val", default="synthetic_stuff_val_sem_seg", help="registered validation split")
    parser.add_argument(
        "--generate",
        type=int,
        nargs=2,
        metavar=("NUM_TRAIN", "NUM_VAL"),
        default=(96, 16),
        help="synthetic images to generate when the synthetic set is missing (default: the demo's 96 16)",
    )
    parser.add_argument("--output", default="output/tiny_sam/sam_tiny.pth", help="checkpoint to write")
    parser.add_argument("--reuse", action="store_true", help="keep a checkpoint trained with the same settings")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (the model is small: a second thread rarely pays)"
    )
    defaults = TinySAMSchedule()
    for name, value in vars(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    return parser


def _records(name: str):
    try:
        return DatasetCatalog.get(name)
    except KeyError as e:
        raise SystemExit(f"dataset '{name}' is not registered ({e}); pass a registered split to --train/--val")


def main(argv=None) -> dict:
    args = get_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.dataset_root:
        os.environ["DETECTRON2_DATASETS"] = args.dataset_root
    root = os.environ.get("DETECTRON2_DATASETS", "datasets")
    if args.train.startswith("synthetic_stuff") and not os.path.isdir(os.path.join(root, "synthetic-stuff")):
        generate_synthetic_stuff(root, num_train=args.generate[0], num_val=args.generate[1], image_size=128, seed=0)
    schedule = TinySAMSchedule(**{k: getattr(args, k) for k in vars(TinySAMSchedule())})
    train = load_region_images(_records(args.train), min_area=schedule.min_region_area)
    val = load_region_images(_records(args.val), min_area=schedule.min_region_area)
    settings = {"schedule": vars(schedule), "train": [args.train, len(train)], "val": [args.val, len(val)]}

    meta_path = os.path.splitext(args.output)[0] + ".json"
    reused = False
    if args.reuse and os.path.isfile(args.output) and os.path.isfile(meta_path):
        with open(meta_path) as f:
            reused = json.load(f).get("settings") == json.loads(json.dumps(settings))
    if reused:
        sam = build_tiny_sam(schedule.image_size)
        load_checkpoint(sam, args.output, "tiny")
        sam.eval().requires_grad_(False)
        training = json.load(open(meta_path))["training"]
        print(f"reusing {args.output} (same schedule and datasets)")
    else:
        sam, training = train_tiny_sam(train, schedule, log=print, log_period=max(1, schedule.iters // 6))
    start = time.perf_counter()
    quality = point_prompt_quality(sam, val, schedule.image_size, seed=schedule.seed)
    sweep = amg_threshold_sweep(sam, val, schedule.image_size)
    report = {"settings": settings, "training": training, "quality": quality, "amg": sweep}
    if not reused:
        save_sam_checkpoint(sam, args.output, report)

    print(f"\ntiny SAM: {training['seconds']:.1f} s of training ({schedule.iters} iterations, {args.threads} threads)")
    print(
        f"single point inside each of {quality['num_prompts']} validation regions: mean IoU "
        f"{quality['best_iou']:.3f} (best of 3 masks), {quality['top_score_iou']:.3f} (highest predicted IoU; "
        f"mean prediction {quality['mean_pred_iou']:.3f})"
    )
    print("masks per image surviving AMG's filters (32x32 grid, box NMS 0.7):")
    for row in sweep:
        tag = " (AMG defaults)" if (row["pred_iou_thresh"], row["stability_score_thresh"]) == AMG_DEFAULTS[:2] else ""
        print(
            f"  pred IoU > {row['pred_iou_thresh']:.2f}, stability >= {row['stability_score_thresh']:.2f}: "
            f"{row['masks_per_image']:.1f}{tag}"
        )
    print(f"checkpoint: {args.output}  (evaluation {time.perf_counter() - start:.1f} s)")
    return report


if __name__ == "__main__":
    main()
