"""Prepare Pascal-Context-459 (validation) in CAT-Seg's layout.

Reads the ids in  <root>/VOCdevkit/VOC2010/pascalcontext_val.txt  and, for each, ``trainval/<id>.mat``
(``LabelMap``, values 1..459), and writes  <root>/VOCdevkit/VOC2010/annotations_detectron2/pc459_val/<id>.tif
(uint16) with ``LabelMap - 1`` (0..458). A LabelMap value 0 (unlabelled; does not occur in the released
files) becomes 65535, the registered ignore label. Ids without a .mat file are skipped and counted, like
CAT-Seg's script (its list has 5104 ids).
"""
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import scipy.io
from PIL import Image

from prepare_common import ensure_dirs, parse_args, require, run_main, run_parallel

IGNORE = 65535
NUM_CLASSES = 459


def convert(src: Path, dst: Path) -> None:
    mat = scipy.io.loadmat(src)
    if "LabelMap" not in mat:
        raise ValueError(f"{src} has no 'LabelMap' (keys: {sorted(k for k in mat if not k.startswith('__'))})")
    label = mat["LabelMap"].astype(np.int64) - 1
    if label.max() >= NUM_CLASSES:
        raise ValueError(f"{src}: LabelMap value {label.max() + 1} exceeds the {NUM_CLASSES} Pascal-Context labels")
    Image.fromarray(np.where(label < 0, IGNORE, label).astype(np.uint16)).save(dst, format="TIFF")


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(__doc__.split("\n")[0], argv)
    voc = args.root / "VOCdevkit" / "VOC2010"
    require(
        voc / "JPEGImages",
        "Pascal VOC 2010 images",
        "download http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar and extract it "
        f"into {args.root}",
    )
    mats = require(
        voc / "trainval",
        "Pascal-Context 459-class labels (trainval/*.mat)",
        f"download https://roozbehm.info/pascal-context/trainval.tar.gz and extract it into {voc}",
    )
    val_list = require(
        voc / "pascalcontext_val.txt",
        "the Pascal-Context validation list",
        "download it from https://drive.google.com/file/d/1BCbiOKtLvozjVnlTJX51koIveUZHCcUh (or copy CAT-Seg's "
        f"datasets/pascalcontext_val.txt) to {voc}",
    )
    out_dir = voc / "annotations_detectron2" / "pc459_val"
    ensure_dirs([out_dir])
    ids = val_list.read_text().split()
    jobs = [(mats / f"{i}.mat", out_dir / f"{i}.tif") for i in ids if (mats / f"{i}.mat").exists()]
    run_parallel(convert, jobs, args.workers, "pascal-context-459")
    print(f"wrote {len(jobs)} label maps to {out_dir}; {len(ids) - len(jobs)} listed ids had no .mat file")


if __name__ == "__main__":
    run_main(main)
