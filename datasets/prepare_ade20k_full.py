"""Prepare ADE20K-847 (ADE20K full, validation) in CAT-Seg's layout.

Reads  <root>/ADE20K_2021_17_01/index_ade20k.pkl  (fields ``folder`` and ``filename``; folders are
relative to <root>) and, per validation image, ``<folder>/<name>.jpg`` and ``<folder>/<name>_seg.png``
(object class = R / 10 * 256 + G, decoded by mess-benchmark's ``loadAde20K``). Maps the 847 frequent ADE
ids (sam_mi's ADE20K_847_IDS, from mess-benchmark) to train ids 0..846, anything else to 65535; when the
short side exceeds 512 the image (bilinear) and label (nearest) are resized to a short side of 512.
Writes  images_detectron2/validation/*.jpg  and  annotations_detectron2/validation/*.tif  (uint16).
Like CAT-Seg, only the validation split is prepared unless ``--splits training validation`` is given.
"""
import pickle
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
from mess.in_domain.prepare_datasets.prepare_ade20k_full_sem_seg import loadAde20K
from PIL import Image

from prepare_common import RawDataMissing, ensure_dirs, parse_args, require, run_main, run_parallel
from sam_mi.data.datasets.class_names import ADE20K_847_IDS, id_lookup_table

IGNORE = 65535
MAX_SHORT_SIDE = 512
LUT = id_lookup_table(ADE20K_847_IDS, ignore=IGNORE, size=max(ADE20K_847_IDS) + 1, dtype=np.uint16)
_HOW = (
    "request ADE20K (2021_17_01) at https://groups.csail.mit.edu/vision/datasets/ADE20K/request_data/ and "
    "unzip it into {root} (giving {root}/ADE20K_2021_17_01/index_ade20k.pkl and images/ADE/...)"
)


def convert(src: Path, out_img: Path, out_lab: Path) -> None:
    lab = loadAde20K(str(src))["class_mask"].astype(np.int32)
    img = np.asarray(Image.open(src).convert("RGB"))
    if img.shape[:2] != lab.shape:
        raise ValueError(f"{src} is {img.shape[:2]} but its _seg.png is {lab.shape}")
    h, w = lab.shape
    if min(h, w) > MAX_SHORT_SIDE:
        # same arithmetic as CAT-Seg's / mess-benchmark's script, so the sizes match to the pixel
        if w >= h:
            size = (MAX_SHORT_SIDE, round(w / float(h) * MAX_SHORT_SIDE))
        else:
            size = (round(h / float(w) * MAX_SHORT_SIDE), MAX_SHORT_SIDE)
        img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        lab = cv2.resize(lab, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    out = np.full(lab.shape, IGNORE, dtype=np.uint16)
    known = (lab >= 0) & (lab < len(LUT))
    out[known] = LUT[lab[known]]
    Image.fromarray(img).save(out_img)  # PIL's default JPEG quality, as CAT-Seg's script
    Image.fromarray(out).save(out_lab)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(
        __doc__.split("\n")[0],
        argv,
        extra=lambda p: p.add_argument(
            "--splits", nargs="+", default=["validation"], choices=["training", "validation"]
        ),
    )
    base = args.root / "ADE20K_2021_17_01"
    how = _HOW.format(root=args.root)
    with open(require(base / "index_ade20k.pkl", "the ADE20K full index", how), "rb") as f:
        index = pickle.load(f)
    jobs = []
    for folder, name in zip(index["folder"], index["filename"]):
        split = "validation" if name.split("_")[1] == "val" else "training"
        if split not in args.splits:
            continue
        src = args.root / folder / name
        if not src.exists():
            raise RawDataMissing(f"image listed in index_ade20k.pkl not found: {src}\n  {how}")
        img_dir, lab_dir = base / "images_detectron2" / split, base / "annotations_detectron2" / split
        jobs.append((src, img_dir / name, lab_dir / (Path(name).stem + ".tif")))
    ensure_dirs({p.parent for job in jobs for p in job[1:]})
    run_parallel(convert, jobs, args.workers, "ade20k-847")
    print(f"wrote {len(jobs)} images and label maps under {base}")


if __name__ == "__main__":
    run_main(main)
