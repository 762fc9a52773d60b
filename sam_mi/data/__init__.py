"""Data: dataset registration (on import), the training and test mappers, and the synthetic set generator.

``sam_mi.data.synthetic`` is not imported here so that ``python -m sam_mi.data.synthetic`` runs cleanly.
"""
from . import datasets  # noqa: F401  (registers the datasets)
from .dataset_mapper import EvalDatasetMapper, SemanticDatasetMapper

__all__ = ["SemanticDatasetMapper", "EvalDatasetMapper"]
