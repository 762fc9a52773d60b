"""Prepare Pascal VOC 2012 (validation) for VOC-20 and VOC-20b in CAT-Seg's layout.

Reads the ids in  <root>/VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt  and their
``SegmentationClassAug/<id>.png`` (0 = background, 1..20 = classes, 255 = boundary), and writes
  annotations_detectron2/val/<id>.png     (1..20 -> 0..19, background -> 255)   for VOC-20
  annotations_detectron2_bg/val/<id>.png  (1..20 -> 0..19, background -> 20)    for VOC-20b
Any other value becomes 255. As in CAT-Seg's script, a map that would be all 255 is not written.
(mess-benchmark's VOC script is not reused: it writes ``annotations_detectron2/val_bg`` and also drops
all-background maps from the VOC-20b set.)
"""
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from prepare_common import RawDataMissing, ensure_dirs, parse_args, require, run_main, run_parallel

LUT = np.full(256, 255, dtype=np.uint8)
LUT[1:21] = np.arange(20)
LUT_BG = LUT.copy()
LUT_BG[0] = 20


def convert(src: Path, dst: Path, dst_bg: Path) -> Tuple[bool, bool]:
    """Returns whether each of the two maps was written (False: all-ignore, skipped)."""
    raw = np.asarray(Image.open(src))  # palette PNG -> class indices
    if raw.ndim != 2:
        raise ValueError(f"{src}: expected a single-channel (palette) PNG, got shape {raw.shape}")
    written = []
    for lut, path in ((LUT, dst), (LUT_BG, dst_bg)):
        label = lut[raw]
        keep = bool((label != 255).any())
        if keep:
            Image.fromarray(label).save(path)
        written.append(keep)
    return written[0], written[1]


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(__doc__.split("\n")[0], argv)
    voc = args.root / "VOCdevkit" / "VOC2012"
    how_voc = (
        "download http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar and extract it "
        f"into {args.root}"
    )
    require(voc / "JPEGImages", "Pascal VOC 2012 images", how_voc)
    val_txt = require(voc / "ImageSets" / "Segmentation" / "val.txt", "the VOC 2012 segmentation val list", how_voc)
    aug = require(
        voc / "SegmentationClassAug",
        "SegmentationClassAug labels",
        f"download https://www.dropbox.com/s/oeu149j8qtbs1x0/SegmentationClassAug.zip and unzip it into {voc}",
    )
    out, out_bg = voc / "annotations_detectron2" / "val", voc / "annotations_detectron2_bg" / "val"
    ensure_dirs([out, out_bg])
    ids = val_txt.read_text().split()
    missing = [i for i in ids if not (aug / f"{i}.png").exists()]
    if missing:
        raise RawDataMissing(
            f"{len(missing)} val ids have no SegmentationClassAug/<id>.png (first: {missing[0]}); "
            "re-extract SegmentationClassAug.zip"
        )
    jobs = [(aug / f"{i}.png", out / f"{i}.png", out_bg / f"{i}.png") for i in ids]
    written = np.array(run_parallel(convert, jobs, args.workers, "voc2012"), dtype=bool).reshape(-1, 2)
    print(f"wrote {written[:, 0].sum()} VOC-20 and {written[:, 1].sum()} VOC-20b label maps "
          f"({len(ids)} ids; all-ignore maps skipped)")


if __name__ == "__main__":
    run_main(main)
