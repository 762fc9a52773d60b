"""Lazy registration of semantic-segmentation splits in detectron2's catalogs.

Every split is a :class:`SemSegSplit` (folders relative to the dataset root, class lists, ignore label,
how to prepare it). Registration stores a loader closure and metadata only: nothing touches the disk at
import time.

Root resolution (a choice, documented because detectron2 convention differs): detectron2's builtin
datasets read ``$DETECTRON2_DATASETS`` once, at import. Here the *loader* reads it again each time a split
is loaded, so that a tool or test can point ``DETECTRON2_DATASETS`` elsewhere after ``import sam_mi``.
The metadata fields ``image_root`` / ``sem_seg_root`` are fixed when registered (detectron2's
MetadataCatalog refuses to change a set value) and so describe the root at import time; nothing in
detectron2's evaluation reads them (SemSegEvaluator takes GT paths from the loaded records).

Unpaired files (a choice): a split is loaded as the image/annotation pairs found, so a half-copied
dataset can still be evaluated, but never silently: annotations without an image, and images without an
annotation (in a folder that belongs to the split alone), are reported with a logged warning giving the
counts and an example, once per process and situation.
"""
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["SemSegSplit", "SPLITS", "dataset_root", "load_split", "register_split"]

DEFAULT_ROOT = "datasets"

logger = logging.getLogger(__name__)
# (split, root, #missing images, #unannotated images) already warned about in this process
_warned: Set[Tuple[str, str, int, int]] = set()


def dataset_root() -> str:
    """The dataset root: ``$DETECTRON2_DATASETS``, default ``datasets`` (relative to the working dir)."""
    return os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", DEFAULT_ROOT))


@dataclass(frozen=True)
class SemSegSplit:
    """One registered split.

    ``image_dir`` / ``gt_dir`` are relative to the dataset root; ``gt_ext`` / ``image_ext`` include the
    dot. ``prepare`` is the command that creates ``gt_dir`` from the raw download.
    ``shared_image_dir``: the image folder also holds images of other splits (VOC's and Pascal-Context's
    ``JPEGImages``), so images without an annotation are expected and not reported.
    """

    name: str
    image_dir: str
    gt_dir: str
    stuff_classes: Sequence[str]
    prepare: str
    gt_ext: str = ".png"
    image_ext: str = ".jpg"
    ignore_label: int = 255
    evaluator_type: str = "sem_seg"
    shared_image_dir: bool = False
    vocabulary: Optional[Sequence[str]] = None
    extra_metadata: Dict[str, Any] = field(default_factory=dict)


# name -> split, for every split registered through this module
SPLITS: Dict[str, SemSegSplit] = {}


def _not_prepared(split: SemSegSplit, root: str, problem: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"Dataset {split.name!r} is not prepared under DETECTRON2_DATASETS={os.path.abspath(root)!r}: "
        f"{problem}. Download the raw data as described in datasets/README.md, then run "
        f"`DETECTRON2_DATASETS={os.path.abspath(root)} {split.prepare}` (or point DETECTRON2_DATASETS at "
        "the folder that already holds the prepared data)."
    )


def _stems(folder: str, ext: str) -> Dict[str, str]:
    """``{file stem: path}`` of the files in ``folder`` (not recursive) whose name ends with ``ext``."""
    return {f[: -len(ext)]: os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(ext)}


def load_split(split: SemSegSplit, root: Optional[str] = None) -> List[Dict[str, str]]:
    """Records ``{"file_name", "sem_seg_file_name"}`` of ``split`` under ``root`` (default: the current
    ``$DETECTRON2_DATASETS``), sorted by file stem.

    Images and annotations are paired by file stem; the pairing is always the intersection (detectron2's
    ``load_sem_seg`` zips the two sorted lists when their lengths agree, which silently mis-pairs folders
    of equal size but different names). VOC's and Pascal-Context's image folders hold many more images than
    annotations; only annotated images are returned. ``height`` / ``width`` are not read here (that would
    open 118k files for COCO); the mappers add them.

    Unpaired files are left out with a warning (module docstring).
    Raises FileNotFoundError naming the preparation command when the split is not prepared.
    """
    root = dataset_root() if root is None else root
    image_dir = os.path.join(root, split.image_dir)
    gt_dir = os.path.join(root, split.gt_dir)
    if not os.path.isdir(gt_dir):
        raise _not_prepared(split, root, f"annotation folder {gt_dir!r} does not exist")
    if not os.path.isdir(image_dir):
        raise _not_prepared(split, root, f"image folder {image_dir!r} does not exist")
    gts = _stems(gt_dir, split.gt_ext)
    if not gts:
        raise _not_prepared(split, root, f"annotation folder {gt_dir!r} holds no *{split.gt_ext} file")
    images = _stems(image_dir, split.image_ext)
    common = sorted(gts.keys() & images.keys())
    if not common:
        raise _not_prepared(
            split, root, f"no *{split.image_ext} image in {image_dir!r} matches an annotation in {gt_dir!r}"
        )
    _warn_unpaired(split, root, sorted(gts.keys() - images.keys()), sorted(images.keys() - gts.keys()), len(common))
    return [{"file_name": images[s], "sem_seg_file_name": gts[s]} for s in common]


def _warn_unpaired(
    split: SemSegSplit, root: str, no_image: List[str], no_annotation: List[str], num_pairs: int
) -> None:
    """Log (once per process and situation) annotations without image and images without annotation."""
    if split.shared_image_dir:
        no_annotation = []
    key = (split.name, os.path.abspath(root), len(no_image), len(no_annotation))
    if not (no_image or no_annotation) or key in _warned:
        return
    _warned.add(key)
    problems = []
    if no_image:
        problems.append(
            f"{len(no_image)} of {len(no_image) + num_pairs} annotations in {split.gt_dir!r} have no image "
            f"in {split.image_dir!r} (e.g. {no_image[0]}{split.gt_ext} has no {no_image[0]}{split.image_ext})"
        )
    if no_annotation:
        problems.append(
            f"{len(no_annotation)} of {len(no_annotation) + num_pairs} images in {split.image_dir!r} have no "
            f"annotation in {split.gt_dir!r} (e.g. {no_annotation[0]}{split.image_ext})"
        )
    logger.warning(
        f"dataset {split.name!r} under {os.path.abspath(root)!r} is incomplete: {'; '.join(problems)}. "
        f"Using the {num_pairs} complete pairs; numbers are NOT comparable with the full split. Re-copy or "
        f"re-extract the missing files, or re-run `{split.prepare}`."
    )


def register_split(split: SemSegSplit) -> None:
    """Register ``split`` in DatasetCatalog (lazy loader) and MetadataCatalog. Idempotent per name."""
    if split.name in DatasetCatalog.list():
        return
    SPLITS[split.name] = split
    DatasetCatalog.register(split.name, lambda s=split: load_split(s))
    root = dataset_root()
    meta: Dict[str, Any] = dict(
        stuff_classes=list(split.stuff_classes),
        ignore_label=split.ignore_label,
        evaluator_type=split.evaluator_type,
        image_root=os.path.join(root, split.image_dir),
        sem_seg_root=os.path.join(root, split.gt_dir),
        prepare_command=split.prepare,
        **split.extra_metadata,
    )
    if split.vocabulary is not None:
        meta["vocabulary"] = list(split.vocabulary)
    MetadataCatalog.get(split.name).set(**meta)
