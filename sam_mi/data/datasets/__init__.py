"""Dataset registration: importing this package registers every split (no disk access at import).

Standard OVSS benchmarks under CAT-Seg's names (see datasets/README.md) and the synthetic set; MESS is
registered on demand by :func:`register_mess.register_mess_datasets`.
"""
from . import (  # noqa: F401  (registration side effects)
    register_ade20k,
    register_coco_stuff,
    register_mess,
    register_pascal_context,
    register_synthetic,
    register_voc,
)
from .register_common import SPLITS, SemSegSplit, dataset_root, load_split, register_split

__all__ = ["SPLITS", "SemSegSplit", "dataset_root", "load_split", "register_split"]
