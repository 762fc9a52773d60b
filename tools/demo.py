#!/usr/bin/env python
"""The tiny end-to-end run: synthetic data -> stage 1 (TSPP) -> stage 2 (SAM-MI) -> evaluation + picture.

Everything is randomly initialised and small enough for a CPU (see configs/tiny/); the code path is the one a
full-size run takes. Usage (what `make demo` runs):

    python tools/demo.py --output-dir demo_output
"""
import argparse
import logging
import os
import time

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

from sam_mi import add_sam_mi_config
from sam_mi.data.synthetic import generate_synthetic_stuff
from sam_mi.engine import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
logger = logging.getLogger("sam_mi.demo")


def load_cfg(config: str, output_dir: str, opts=()):
    cfg = get_cfg()
    add_sam_mi_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, config))
    cfg.merge_from_list(list(opts))
    cfg.OUTPUT_DIR = output_dir
    cfg.freeze()
    os.makedirs(output_dir, exist_ok=True)
    return cfg


def train(cfg) -> None:
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()


def miou_table(results: dict, class_names) -> str:
    sem = results["sem_seg"]
    rows = [(name, f"{sem.get('IoU-' + name, float('nan')):.1f}") for name in class_names]
    rows += [("mIoU", f"{sem['mIoU']:.1f}"), ("pixel acc.", f"{sem['pACC']:.1f}")]
    return tabulate(rows, headers=["class", "IoU (%)"], tablefmt="github")


def save_picture(model, dataset: str, path: str, num_images: int = 4) -> None:
    """Image | ground truth | prediction for the first validation images, coloured by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    meta = MetadataCatalog.get(dataset)
    colors = np.array(meta.stuff_colors, dtype=np.uint8) if meta.get("stuff_colors") else None
    if colors is None:
        colors = (np.random.RandomState(0).rand(len(meta.stuff_classes), 3) * 255).astype(np.uint8)
    records = DatasetCatalog.get(dataset)[:num_images]
    fig, axes = plt.subplots(len(records), 3, figsize=(9, 3 * len(records)), squeeze=False)
    model.eval()
    for row, rec in zip(axes, records):
        image = read_image(rec["file_name"], format="RGB")
        gt = read_image(rec["sem_seg_file_name"]).astype(np.int64)
        out = model([{"image": torch.as_tensor(image.transpose(2, 0, 1).copy()), "height": image.shape[0], "width": image.shape[1]}])[0]
        pred = out["sem_seg"].argmax(0).cpu().numpy()
        gt_rgb = np.where((gt == meta.ignore_label)[..., None], 0, colors[np.clip(gt, 0, len(colors) - 1)])
        for ax, img, title in zip(
            row,
            (image, gt_rgb, colors[pred]),
            ("image", "ground truth", f"SAM-MI ({out['sam_mi']['num_sam_masks']} SAM masks, {out['sam_mi']['num_masks']} injected)"),
        ):
            ax.imshow(img)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    handles = [Patch(color=c / 255.0, label=n) for n, c in zip(meta.stuff_classes, colors)]
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="demo_output")
    parser.add_argument("--stage1-iters", type=int, default=None, help="default: configs/tiny stage 1")
    parser.add_argument("--stage2-iters", type=int, default=None, help="default: configs/tiny stage 2")
    parser.add_argument("--num-train", type=int, default=96)
    parser.add_argument("--num-val", type=int, default=16)
    args = parser.parse_args()

    out = os.path.abspath(args.output_dir)
    os.makedirs(out, exist_ok=True)
    setup_logger(output=out, name="sam_mi")
    setup_logger(output=out, name="detectron2", abbrev_name="d2")
    seed_all_rng(0)  # python, numpy and torch: the sampler's shuffling and the model's initialisation repeat
    start = time.time()

    data_root = os.path.join(out, "datasets")
    os.environ["DETECTRON2_DATASETS"] = data_root
    if not os.path.isdir(os.path.join(data_root, "synthetic-stuff")):
        generate_synthetic_stuff(data_root, num_train=args.num_train, num_val=args.num_val, image_size=128, seed=0)
    logger.info("synthetic dataset ready under %s", data_root)

    stage1_dir, stage2_dir = os.path.join(out, "stage1"), os.path.join(out, "stage2")
    opts1 = ["SOLVER.MAX_ITER", args.stage1_iters] if args.stage1_iters else []
    cfg1 = load_cfg("configs/tiny/sam_mi_tiny_stage1.yaml", stage1_dir, opts1)
    logger.info("=== stage 1: TSPP alone, %d iterations", cfg1.SOLVER.MAX_ITER)
    train(cfg1)

    opts2 = ["MODEL.WEIGHTS", os.path.join(stage1_dir, "model_final.pth")]
    opts2 += ["SOLVER.MAX_ITER", args.stage2_iters] if args.stage2_iters else []
    cfg2 = load_cfg("configs/tiny/sam_mi_tiny_stage2.yaml", stage2_dir, opts2)
    logger.info("=== stage 2: the whole model with SAM masks injected, %d iterations", cfg2.SOLVER.MAX_ITER)
    train(cfg2)

    logger.info("=== evaluation on %s", cfg2.DATASETS.TEST[0])
    model = Trainer.build_model(cfg2)
    DetectionCheckpointer(model).load(os.path.join(stage2_dir, "model_final.pth"))
    results = Trainer.test(cfg2, model)
    dataset = cfg2.DATASETS.TEST[0]
    table = miou_table(results, MetadataCatalog.get(dataset).stuff_classes)
    picture = os.path.join(out, "predictions.png")
    save_picture(model, dataset, picture)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table + "\n")
    print("\nSAM-MI tiny demo: semantic segmentation on " + dataset + "\n" + table)
    print(f"\npicture: {picture}\ntotal time: {time.time() - start:.0f} s (set-up excluded)")


if __name__ == "__main__":
    main()
