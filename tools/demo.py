#!/usr/bin/env python
"""The tiny end-to-end demo (what `make demo` runs): synthetic data -> CAT-Seg baseline and SAM-MI (stage 1,
stage 2) -> one table of their effect (mIoU, boundary IoU, points / masks / ms per image; TSPP vs grid vs
random-64 prompts; oracle masks) -> results.md, predictions.png and a predictor panel (sam_mi/engine/demo.py).

    python tools/demo.py --output-dir demo_output
"""
import argparse
import logging
import os
import time

import torch

from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from sam_mi.data.synthetic import generate_synthetic_stuff
from sam_mi.engine.demo import effect_table, run_demo

logger = logging.getLogger("sam_mi.demo")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="demo_output")
    parser.add_argument("--stage1-iters", type=int, default=500)
    parser.add_argument("--warmup-iters", type=int, default=300,
                        help="shared warm-up of the random tiny CLIP (CAT-Seg's training) that the baseline and "
                             "SAM-MI both start from, the tiny stand-in for a pre-trained CLIP; 0: none")
    parser.add_argument("--stage2-iters", type=int, default=500, help="also the baseline's (same schedule)")
    parser.add_argument("--num-train", type=int, default=96)
    parser.add_argument("--num-val", type=int, default=16)
    parser.add_argument("--sam-checkpoint", default="",
                        help="a tiny SAM checkpoint (segment-anything format); empty: the random tiny SAM")
    parser.add_argument("--workers", type=int, default=2,
                        help="processes for the baseline's and SAM-MI's trainings (independent); 1: in order")
    parser.add_argument("--train-sam-iters", type=int, default=0,
                        help="first train the tiny SAM with SAM's recipe for this many iterations "
                             "(tools/train_tiny_sam.py; reused by a second run) and inject its masks; 6000 (~4 min "
                             "on one core) leaves the prompt-blind plateau (sam_mi/engine/sam_pretraining.py). "
                             "0: --sam-checkpoint or the random tiny SAM, within the demo's 5-minute budget")
    args = parser.parse_args()

    out = os.path.abspath(args.output_dir)
    os.makedirs(out, exist_ok=True)
    setup_logger(output=out, name="sam_mi")
    setup_logger(output=out, name="detectron2", abbrev_name="d2")
    seed_all_rng(0)  # python, numpy and torch: model initialisation repeats
    start = time.time()
    data_root = os.path.join(out, "datasets")
    os.environ["DETECTRON2_DATASETS"] = data_root
    if not os.path.isdir(os.path.join(data_root, "synthetic-stuff")):
        generate_synthetic_stuff(data_root, num_train=args.num_train, num_val=args.num_val, image_size=128, seed=0)
    logger.info("synthetic dataset ready under %s", data_root)

    sam_checkpoint = args.sam_checkpoint
    if args.train_sam_iters > 0:
        from train_tiny_sam import main as train_tiny_sam  # tools/train_tiny_sam.py, next to this script

        sam_checkpoint = os.path.join(out, "tiny_sam", "sam_tiny.pth")
        threads = torch.get_num_threads()  # the SAM trainer runs on one thread; the demo's stages use them all
        train_tiny_sam(["--dataset-root", data_root, "--output", sam_checkpoint, "--reuse",
                        "--iters", str(args.train_sam_iters), "--min-region-area", "100"])
        torch.set_num_threads(threads)
    rows = run_demo(out, args.num_train, args.num_val, sam_checkpoint,
                    {"warmup": args.warmup_iters, "stage1": args.stage1_iters, "stage2": args.stage2_iters},
                    workers=args.workers)
    table = effect_table(rows)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("# SAM-MI tiny demo: synthetic validation set, whole-image inference\n\n" + table + "\n")
    print("\nSAM-MI tiny demo (synthetic validation set)\n" + table)
    print(f"\npictures: {os.path.join(out, 'predictions.png')}, {os.path.join(out, 'panel.png')}")
    print(f"total time: {time.time() - start:.0f} s (set-up excluded)")


if __name__ == "__main__":
    main()
