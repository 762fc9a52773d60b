"""SAM-MI: a mask-injected framework for open-vocabulary semantic segmentation with SAM.

Importing the package registers the datasets (``sam_mi.data``) and the ``SAMMI`` meta-architecture.
"""
from . import data  # noqa: F401  (registers datasets)
from . import modeling  # noqa: F401  (registers SAMMI in META_ARCH_REGISTRY)
from .config import add_sam_mi_config

__all__ = ["add_sam_mi_config"]
