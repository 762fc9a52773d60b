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

from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from sam_mi.data.synthetic import generate_synthetic_stuff
from sam_mi.engine.demo import effect_table, run_demo, sam_caption, seed_summary_table
from sam_mi.utils.atomic_io import write_text_atomic

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
    parser.add_argument("--train-sam-iters", type=int, default=2000,
                        help="train the tiny SAM with SAM's recipe for this many iterations first (beside the CLIP "
                             "warm-up; reused by a second run; sam_mi/engine/sam_pretraining.py) and inject its "
                             "masks; 0: --sam-checkpoint, or the random tiny SAM")
    parser.add_argument("--sam-checkpoint", default="",
                        help="with --train-sam-iters 0: a tiny SAM checkpoint (segment-anything format); empty: the "
                             "random tiny SAM")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="one demo per seed (every training and the tiny SAM seeded with it; several: under "
                             "<output-dir>/seed_<k>, then each row's mean and spread and its paired difference "
                             "to the baseline over the seeds; the tiny scale's run-to-run spread is several points)")
    parser.add_argument("--workers", type=int, default=2,
                        help="processes for the trainings (sam_mi/engine/job_graph.py); 1: in this process, in order")
    args = parser.parse_args()
    if args.train_sam_iters > 0 and args.sam_checkpoint:
        parser.error("--sam-checkpoint needs --train-sam-iters 0 (otherwise the demo trains its own tiny SAM)")

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

    iters = {"sam": args.train_sam_iters, "warmup": args.warmup_iters, "stage1": args.stage1_iters,
             "stage2": args.stage2_iters}
    report, per_seed = [], {}
    for seed in args.seeds:
        seed_out = out if len(args.seeds) == 1 else os.path.join(out, f"seed_{seed}")
        rows, sam_report = run_demo(seed_out, args.sam_checkpoint, iters, workers=args.workers, seed=seed)
        per_seed[seed] = rows
        title = "" if len(args.seeds) == 1 else f"## seed {seed}\n\n"
        report.append(title + sam_caption(sam_report, args.sam_checkpoint) + "\n\n" + effect_table(rows) + "\n")
    if len(args.seeds) > 1:
        report.append(f"## over seeds {', '.join(map(str, args.seeds))}: mean ± standard deviation\n\n"
                      + seed_summary_table(per_seed) + "\n")
    text = "\n".join(report)
    write_text_atomic(os.path.join(out, "results.md"),
                      "# SAM-MI tiny demo: synthetic validation set, whole-image inference\n\n" + text)
    print("\nSAM-MI tiny demo (synthetic validation set)\n" + text)
    seed_out = out if len(args.seeds) == 1 else os.path.join(out, f"seed_{args.seeds[0]}")
    print(f"\npictures: {os.path.join(seed_out, 'predictions.png')}, {os.path.join(seed_out, 'panel.png')}")
    print(f"total time: {time.time() - start:.0f} s (set-up excluded)")


if __name__ == "__main__":
    main()
