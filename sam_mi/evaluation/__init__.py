"""Evaluation: evaluators per dataset kind (ground truth checked), SAM-MI counts per image (Table 6), the
resumable suite loop with provenance-checked results, and the report against the paper."""
from .build import build_evaluator, evaluator_kind
from .ground_truth import CheckedGroundTruth, CheckedSemSegEvaluator
from .report import aggregate, load_paper_results, write_report
from .sam_mi_stats import SAMMIStatsEvaluator
from .suite import OVSS_SUITE, apply_protocol, evaluate_dataset, resolve_suite, run_suite
from .voc_background import VOCbEvaluator, map_background_predictions, merge_background_scores

__all__ = [
    "build_evaluator",
    "evaluator_kind",
    "CheckedGroundTruth",
    "CheckedSemSegEvaluator",
    "SAMMIStatsEvaluator",
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
