"""Prepare COCO-Stuff-171 in CAT-Seg's layout (train2017 and val2017).

Reads  <root>/coco-stuff/annotations/{train2017,val2017}/*.png  (stuffthingmaps_trainval2017: 0-based COCO
ids 0..181, 255 = unlabelled) and writes  <root>/coco-stuff/annotations_detectron2/{split}/*.png  with the
171 used ids mapped to train ids 0..170 (things first, as in sam_mi's COCO_STUFF_171_CLASSES) and every
other value to 255. Images are expected in <root>/coco-stuff/images/{split}/*.jpg.
"""
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from prepare_common import ensure_dirs, files_with_suffix, parse_args, require, run_main, run_parallel
from sam_mi.data.datasets.class_names import COCO_STUFF_171_IDS, id_lookup_table

# raw stuffthingmap value -> train id; 255 (and the 11 unused COCO ids) -> 255
LUT = id_lookup_table(COCO_STUFF_171_IDS, ignore=255, size=256)


def convert(src: Path, dst: Path) -> None:
    label = np.asarray(Image.open(src))
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f"{src}: expected a single-channel uint8 stuffthingmap, got {label.dtype} {label.shape}")
    Image.fromarray(LUT[label]).save(dst)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(
        __doc__.split("\n")[0],
        argv,
        extra=lambda p: p.add_argument("--splits", nargs="+", default=["train2017", "val2017"]),
    )
    base = args.root / "coco-stuff"
    jobs = []
    for split in args.splits:
        require(
            base / "images" / split,
            f"COCO {split} images",
            f"download http://images.cocodataset.org/zips/{split}.zip and unzip it into {base / 'images'}",
        )
        ann_dir = require(
            base / "annotations" / split,
            f"COCO-Stuff {split} stuffthingmaps",
            "download http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/"
            f"stuffthingmaps_trainval2017.zip and unzip it into {base / 'annotations'}",
        )
        out_dir = base / "annotations_detectron2" / split
        ensure_dirs([out_dir])
        jobs += [(p, out_dir / p.name) for p in files_with_suffix(ann_dir, ".png")]
    run_parallel(convert, jobs, args.workers, "coco-stuff")
    print(f"wrote {len(jobs)} label maps under {base / 'annotations_detectron2'}")


if __name__ == "__main__":
    run_main(main)
