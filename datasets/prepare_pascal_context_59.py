"""Prepare Pascal-Context-59 (validation) in CAT-Seg's layout.

Reads  <root>/VOCdevkit/VOC2010/trainval_merged.json  (images with ``phase == "val"``; per-object RLE masks
in ``annos_segmentation`` with a raw 459-label ``category_id``), paints each image's masks in file order,
maps the 60 raw ids of PC-59 (background 0 + 59 classes, mess-benchmark's sorted list) to 255, 0..58 and
every other id to 255, and writes  <root>/VOCdevkit/VOC2010/annotations_detectron2/pc59_val/<image>.png.
A val image without any annotation gets an all-255 map.
"""
import json
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

from prepare_common import ensure_dirs, parse_args, require, run_main, run_parallel
from sam_mi.data.datasets.class_names import id_lookup_table, pascal_context_59_raw_ids

_HOW_JSON = "download https://codalabuser.blob.core.windows.net/public/trainval_merged.json into {voc}"
_HOW_IMAGES = (
    "download http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar and extract it "
    "into {root} (giving {root}/VOCdevkit/VOC2010/JPEGImages)"
)


def convert(info: Dict, annos: List[Dict], lut: np.ndarray, dst: Path) -> None:
    raw = np.zeros((info["height"], info["width"]), dtype=np.int64)  # 0 = background
    for ann in annos:  # later annotations overwrite earlier ones, as in CAT-Seg / mess-benchmark
        raw[mask_util.decode(ann["segmentation"]) > 0] = ann["category_id"]
    out = np.full(raw.shape, 255, dtype=np.uint8)
    known = raw < len(lut)
    out[known] = lut[raw[known]]
    Image.fromarray(out).save(dst)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(__doc__.split("\n")[0], argv)
    voc = args.root / "VOCdevkit" / "VOC2010"
    require(voc / "JPEGImages", "Pascal VOC 2010 images", _HOW_IMAGES.format(root=args.root))
    json_path = require(voc / "trainval_merged.json", "Pascal-Context-59 annotations", _HOW_JSON.format(voc=voc))
    raw_ids = pascal_context_59_raw_ids()
    # raw_ids[0] is background (0): leave it out so it keeps the ignore value; class k -> k
    lut = id_lookup_table(raw_ids[1:], ignore=255, size=max(raw_ids) + 1)
    with open(json_path) as f:
        data = json.load(f)
    val = {d["image_id"]: d for d in data["images"] if d["phase"] == "val"}
    annos: Dict[int, List[Dict]] = defaultdict(list)
    for ann in data["annos_segmentation"]:
        if ann["image_id"] in val:
            annos[ann["image_id"]].append(ann)
    out_dir = voc / "annotations_detectron2" / "pc59_val"
    ensure_dirs([out_dir])
    jobs = [(info, annos[i], lut, out_dir / (Path(info["file_name"]).stem + ".png")) for i, info in val.items()]
    run_parallel(convert, jobs, args.workers, "pascal-context-59")
    print(f"wrote {len(jobs)} label maps to {out_dir}")


if __name__ == "__main__":
    run_main(main)
