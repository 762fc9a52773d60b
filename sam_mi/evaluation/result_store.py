"""Per-dataset result files of the suite: ``<output>/<dataset>/results.json``, written atomically.

A stored result is a JSON object ``{"dataset", "num_images", "seconds", "evaluator", "metrics",
"sam_mi", "provenance"}`` (``provenance``: :mod:`sam_mi.evaluation.provenance`).  Reading never raises on
a damaged file: :func:`load_stored_result` returns the problem instead, and the suite re-evaluates the
dataset with a warning naming the file.
"""
import json
import math
import os
from typing import Any, Dict, Optional, Tuple

from ..utils.atomic_io import write_json_atomic

__all__ = ["RESULT_FILE", "result_path", "load_stored_result", "write_stored_result", "json_number"]

RESULT_FILE = "results.json"


def result_path(output_dir: str, dataset_name: str) -> str:
    return os.path.join(output_dir, dataset_name, RESULT_FILE)


def json_number(value: Any) -> Optional[float]:
    """float, or None for NaN (a class absent from both GT and predictions): JSON has no NaN."""
    value = float(value)
    return None if math.isnan(value) else value


def load_stored_result(path: str) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """``(record, None)`` for a readable result, ``(None, None)`` when there is none, ``(None, problem)``
    for a damaged one (empty, not JSON, not an object, no ``metrics`` object)."""
    if not os.path.isfile(path):
        return None, None
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if not text.strip():
            return None, "the file is empty"
        record = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"{type(e).__name__}: {e}"
    if not isinstance(record, dict):
        return None, f"it holds a JSON {type(record).__name__}, not an object"
    if not isinstance(record.get("metrics"), dict):
        return None, "it has no 'metrics' object"
    return record, None


def write_stored_result(path: str, record: Dict[str, Any]) -> None:
    """Write ``record`` atomically (temporary file, flush + fsync, rename)."""
    write_json_atomic(path, record)
