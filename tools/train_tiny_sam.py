#!/usr/bin/env python
r"""Train the tiny SAM with SAM's recipe on a semantic-segmentation set, save it, report its quality.

    # on the synthetic set (generated under --dataset-root if missing)
    python tools/train_tiny_sam.py --dataset-root datasets --output output/tiny_sam/sam_tiny.pth
    # then use it like SAM-H (the SAM builder must load tiny checkpoints too):
    #   MODEL.SAM_MI.SAM.MODEL_TYPE tiny MODEL.SAM_MI.SAM.IMAGE_SIZE 128 \
    #   MODEL.SAM_MI.SAM.CHECKPOINT output/tiny_sam/sam_tiny.pth

Writes ``<output>`` (a plain `Sam` state dict, segment-anything's checkpoint format) and
``<output minus .pth>.json`` (schedule, training time, quality), both atomically. With ``--reuse`` an
existing checkpoint whose JSON records the same schedule and datasets is kept (sam_mi/engine/tiny_sam_run.py).
Quality: single-point IoU on the validation regions (best of 3 masks, highest predicted IoU), the same with
the prompts' x and y swapped (how much the masks follow the prompt), and masks per image surviving SAM's
automatic-generation filters for a 32x32 grid (sam_mi/engine/sam_quality.py). ``--eval-period N`` follows
both validation IoUs during training.
"""

import argparse
import os

import torch

import sam_mi  # noqa: F401  (registers the datasets)
from sam_mi.data.synthetic import generate_synthetic_stuff
from sam_mi.engine.sam_pretraining import TinySAMSchedule
from sam_mi.engine.sam_quality import AMG_DEFAULTS
from sam_mi.engine.tiny_sam_run import train_or_reuse_tiny_sam


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
    parser.add_argument(
        "--eval-period",
        type=int,
        default=0,
        help="every N iterations, print the validation single-point IoU and the same with x and y swapped "
        "(0: only at the end)",
    )
    defaults = TinySAMSchedule()
    for name, value in vars(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    return parser


def main(argv=None) -> dict:
    args = get_parser().parse_args(argv)
    if args.dataset_root:
        os.environ["DETECTRON2_DATASETS"] = args.dataset_root
    root = os.environ.get("DETECTRON2_DATASETS", "datasets")
    if args.train.startswith("synthetic_stuff") and not os.path.isdir(os.path.join(root, "synthetic-stuff")):
        generate_synthetic_stuff(root, num_train=args.generate[0], num_val=args.generate[1], image_size=128, seed=0)
    schedule = TinySAMSchedule(**{k: getattr(args, k) for k in vars(TinySAMSchedule())})
    threads = torch.get_num_threads()
    try:
        report = train_or_reuse_tiny_sam(args.train, args.val, args.output, schedule, reuse=args.reuse,
                                         eval_period=args.eval_period, threads=args.threads)
    except ValueError as e:
        raise SystemExit(str(e))
    finally:
        torch.set_num_threads(threads)
    training, quality, swapped = report["training"], report["quality"], report["swapped_quality"]
    print(f"\ntiny SAM: {training['seconds']:.1f} s of training ({schedule.iters} iterations, {args.threads} threads)")
    print(
        f"single point inside each of {quality['num_prompts']} validation regions: mean IoU "
        f"{quality['best_iou']:.3f} (best of 3 masks; {swapped['best_iou']:.3f} with x and y swapped), "
        f"{quality['top_score_iou']:.3f} (highest predicted IoU; mean prediction {quality['mean_pred_iou']:.3f})"
    )
    print("masks per image surviving AMG's filters (32x32 grid, box NMS 0.7):")
    for row in report["amg"]:
        tag = " (AMG defaults)" if (row["pred_iou_thresh"], row["stability_score_thresh"]) == AMG_DEFAULTS[:2] else ""
        print(
            f"  pred IoU > {row['pred_iou_thresh']:.2f}, stability >= {row['stability_score_thresh']:.2f}: "
            f"{row['masks_per_image']:.1f}{tag}"
        )
    print(f"checkpoint: {args.output}")
    return report


if __name__ == "__main__":
    main()
