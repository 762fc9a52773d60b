"""Evaluation: evaluators per dataset kind, the resumable suite loop and the report against the paper."""
from .build import build_evaluator, evaluator_kind
from .report import aggregate, load_paper_results, write_report
from .suite import OVSS_SUITE, apply_protocol, evaluate_dataset, resolve_suite, run_suite
from .voc_background import VOCbEvaluator, map_background_predictions, merge_background_scores

__all__ = [
    "build_evaluator",
    "evaluator_kind",
    "VOCbEvaluator",
    "merge_background_scores",
    "map_background_predictions",
    "OVSS_SUITE",
    "resolve_suite",
    "apply_protocol",
    "evaluate_dataset",
    "run_suite",
    "aggregate",
    "load_paper_results",
    "write_report",
]
