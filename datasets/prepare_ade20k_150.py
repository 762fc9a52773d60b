"""Prepare ADE20K-150 (validation) in CAT-Seg's layout.

Reads  <root>/ADEChallengeData2016/annotations/validation/*.png  (uint8, 0 = other, 1..150 = classes) and
writes  <root>/ADEChallengeData2016/annotations_detectron2/validation/*.png  with ``label - 1`` in uint8
(0 wraps to 255 = ignore; classes become 0..149). The conversion is mess-benchmark's
``prepare_ade20k_sem_seg.convert`` (the same step as CAT-Seg's script).
"""
from typing import Optional, Sequence

from mess.in_domain.prepare_datasets.prepare_ade20k_sem_seg import convert

from prepare_common import ensure_dirs, files_with_suffix, parse_args, require, run_main, run_parallel

_HOW = "download http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip and unzip it into {root}"


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(__doc__.split("\n")[0], argv)
    base = args.root / "ADEChallengeData2016"
    how = _HOW.format(root=args.root)
    require(base / "images" / "validation", "ADE20K-150 validation images", how)
    ann_dir = require(base / "annotations" / "validation", "ADE20K-150 validation annotations", how)
    out_dir = base / "annotations_detectron2" / "validation"
    ensure_dirs([out_dir])
    jobs = [(p, out_dir / p.name) for p in files_with_suffix(ann_dir, ".png")]
    run_parallel(convert, jobs, args.workers, "ade20k-150")
    print(f"wrote {len(jobs)} label maps to {out_dir}")


if __name__ == "__main__":
    run_main(main)
