"""Which class names a dataset is prompted with, validated in one place.

Every path that hands class names to the model (training, ``tools/train_net.py --eval-only``, the
evaluation suite) goes through :func:`resolve_vocabulary`, so a vocabulary is checked once and the same
way: a non-empty list of unique, non-empty strings whose length fits the dataset's label ids.

Length rule (what the evaluators score):

- ``sem_seg`` / MESS datasets: one prompt per label id, ``len(names) == len(stuff_classes)``;
- background sets (``evaluator_type == "sem_seg_background"``, VOC-20b): the first
  ``background_class`` prompts are the classes, every further prompt stands for background
  (``VOCbEvaluator`` merges them), so ``len(names) > background_class``.
  CAT-Seg prompts VOC-20b with 59 names (cvlab-kaist/CAT-Seg datasets/voc20b.json).
"""
import json
import os
from collections import Counter
from typing import List, Optional, Sequence, Tuple

from detectron2.data import MetadataCatalog

__all__ = [
    "VocabularyError",
    "validate_vocabulary",
    "load_vocabulary_json",
    "vocabulary_size_rule",
    "resolve_vocabulary",
    "dataset_vocabulary",
]


class VocabularyError(ValueError):
    """A vocabulary (JSON file or dataset metadata) that cannot prompt the model."""


def validate_vocabulary(names: object, source: str) -> List[str]:
    """Check that ``names`` is a non-empty list of unique, non-empty strings; return it as a list.

    Args:
        names: the decoded vocabulary (anything; a JSON file may hold any value).
        source: what it came from, for the message (a file name, "metadata of dataset X").
    Raises:
        VocabularyError naming ``source`` and what is wrong.
    """
    if isinstance(names, str):
        raise VocabularyError(
            f"{source}: holds a single string ({names[:60]!r}), expected a JSON list of class names such as "
            '["wall", "building", "sky"] (a string would be read as a list of characters)'
        )
    if isinstance(names, dict) or not isinstance(names, (list, tuple)):
        raise VocabularyError(
            f"{source}: holds a {type(names).__name__}, expected a JSON list of class names such as "
            '["wall", "building", "sky"]'
        )
    if len(names) == 0:
        raise VocabularyError(f"{source}: the list of class names is empty")
    bad = [(i, n) for i, n in enumerate(names) if not isinstance(n, str) or not n.strip()]
    if bad:
        shown = ", ".join(f"#{i} = {n!r}" for i, n in bad[:5])
        raise VocabularyError(f"{source}: every class name must be a non-empty string; not so for {shown}")
    counts = Counter(n.strip() for n in names)
    duplicates = [n for n, c in counts.items() if c > 1]
    if duplicates:
        shown = ", ".join(f"{n!r} ({counts[n]}x)" for n in duplicates[:10])
        raise VocabularyError(
            f"{source}: class names must be unique (each is one output channel); duplicated: {shown}"
        )
    return [str(n) for n in names]


def load_vocabulary_json(path: str) -> List[str]:
    """Read and validate a vocabulary JSON file (a list of class names). Errors name the file."""
    if not os.path.isfile(path):
        raise VocabularyError(f"vocabulary file {path!r} (MODEL.SAM_MI.VOCABULARY_JSON) does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            names = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VocabularyError(
            f"vocabulary file {path!r} (MODEL.SAM_MI.VOCABULARY_JSON) is not valid JSON: {e}"
        ) from e
    return validate_vocabulary(names, f"vocabulary file {path!r} (MODEL.SAM_MI.VOCABULARY_JSON)")


def vocabulary_size_rule(dataset_name: str) -> Tuple[int, bool]:
    """``(n, exact)``: a vocabulary for ``dataset_name`` needs exactly ``n`` names (``exact``), or at least
    ``n`` (background sets; see the module docstring)."""
    meta = MetadataCatalog.get(dataset_name)
    classes = meta.get("stuff_classes", None)
    if not classes:
        raise VocabularyError(
            f"dataset {dataset_name!r} has no class names in MetadataCatalog (stuff_classes); "
            "is it registered? import sam_mi registers the benchmarks; MESS needs "
            "sam_mi.data.datasets.register_mess.register_mess_datasets()"
        )
    if meta.get("evaluator_type", None) == "sem_seg_background":
        background = int(meta.get("background_class", len(classes) - 1))
        return background + 1, False
    return len(classes), True


def _check_size(names: Sequence[str], dataset_name: str, source: str) -> None:
    n, exact = vocabulary_size_rule(dataset_name)
    if exact and len(names) != n:
        raise VocabularyError(
            f"{source}: has {len(names)} class names but dataset {dataset_name!r} has {n} label ids "
            f"(stuff_classes); give exactly {n} names, in label-id order"
        )
    if not exact and len(names) < n:
        raise VocabularyError(
            f"{source}: has {len(names)} class names but dataset {dataset_name!r} needs at least {n}: its "
            f"{n - 1} classes in label-id order, then one or more names that stand for background"
        )


def resolve_vocabulary(dataset_name: Optional[str], vocabulary_json: str = "") -> List[str]:
    """The validated class names to prompt ``dataset_name`` with.

    Args:
        dataset_name: a registered dataset, or None/"" when there is none (then ``vocabulary_json`` must be
            given and only its structure is checked).
        vocabulary_json: ``MODEL.SAM_MI.VOCABULARY_JSON``; when set it replaces the dataset's names.
    Returns:
        the names: the JSON file's, else the metadata ``vocabulary`` (e.g. VOC-20b's 59 prompts), else
        ``stuff_classes``.
    Raises:
        VocabularyError naming the file (or dataset) and what is wrong: not a list, empty, a non-string or
        empty name, duplicated names, or a length that does not fit the dataset's label ids.
    """
    if vocabulary_json:
        names = load_vocabulary_json(vocabulary_json)
        if dataset_name:
            _check_size(names, dataset_name, f"vocabulary file {vocabulary_json!r} (MODEL.SAM_MI.VOCABULARY_JSON)")
        return names
    if not dataset_name:
        raise VocabularyError(
            "no dataset to take the vocabulary from: set DATASETS.TRAIN / DATASETS.TEST or "
            "MODEL.SAM_MI.VOCABULARY_JSON"
        )
    vocabulary_size_rule(dataset_name)  # raises a clear error for unregistered names
    meta = MetadataCatalog.get(dataset_name)
    key = "vocabulary" if meta.get("vocabulary", None) else "stuff_classes"
    source = f"metadata {key!r} of dataset {dataset_name!r}"
    names = validate_vocabulary(list(meta.get(key)), source)
    _check_size(names, dataset_name, source)
    return names


def dataset_vocabulary(dataset_name: str) -> List[str]:
    """The registered prompts for ``dataset_name`` (``resolve_vocabulary`` without a JSON override)."""
    return resolve_vocabulary(dataset_name)
