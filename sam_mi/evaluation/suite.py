"""Evaluate a model over a suite of datasets: the loop behind ``tools/eval_all.py``.

A suite is resumable: each dataset's metrics are written to ``<output>/<dataset>/results.json`` (atomically,
by the main process) when its evaluation finishes, and a dataset with that file is not evaluated again.
Datasets that are not prepared are skipped with a line saying how to prepare them; a dataset whose
evaluation raises is recorded as failed and the suite goes on, so a long run never dies halfway.
"""
import json
import logging
import math
import os
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog, build_detection_test_loader
from detectron2.evaluation import DatasetEvaluator, inference_on_dataset
from detectron2.utils import comm

from ..data.datasets.register_mess import is_mess_dataset, mess_prepare_command, register_mess_datasets
from ..data.vocabulary import dataset_vocabulary
from .build import build_evaluator, evaluator_kind

__all__ = [
    "OVSS_SUITE",
    "PROTOCOL_OPTS",
    "SuiteOutcome",
    "resolve_suite",
    "apply_protocol",
    "preparation_command",
    "dataset_size",
    "evaluate_dataset",
    "run_suite",
    "RESULT_FILE",
]

logger = logging.getLogger("sam_mi.evaluation")

# Paper Table 2 order, plus PAS-20b (CAT-Seg's sixth benchmark).
OVSS_SUITE = (
    "ade20k_full_sem_seg_freq_val_all",
    "context_459_test_sem_seg",
    "ade20k_150_test_sem_seg",
    "context_59_test_sem_seg",
    "voc_2012_test_sem_seg",
    "voc_2012_test_background_sem_seg",
)
# The evaluation protocol of CAT-Seg's eval.sh and of the MESS recipe (catseg.md §2.5, data_and_sam.md
# §1.4): sliding-window inference and no class-aggregation pooling.  Applied before the user's overrides.
PROTOCOL_OPTS = ["MODEL.SAM_MI.INFERENCE.SLIDING_WINDOW", True, "MODEL.SAM_MI.AGGREGATOR.POOLING_SIZES", [1, 1]]
RESULT_FILE = "results.json"



@dataclass
class SuiteOutcome:
    """What a suite run produced (complete on the main process only)."""

    results: Dict[str, Dict[str, float]] = field(default_factory=dict)  # dataset -> evaluator metrics
    skipped: Dict[str, str] = field(default_factory=dict)  # dataset -> reason + preparation command
    failed: Dict[str, str] = field(default_factory=dict)  # dataset -> error
    evaluated: List[str] = field(default_factory=list)  # evaluated in this run (not resumed)


def resolve_suite(spec: str) -> List[str]:
    """Dataset names of ``spec``: "ovss", "mess", or a comma-separated list mixing names and suites.

    MESS datasets are registered (see ``register_mess_datasets``) only when "mess" is asked for or a
    listed name is not registered otherwise.
    """
    names: List[str] = []
    for token in [t.strip() for t in spec.split(",") if t.strip()]:
        if token == "ovss":
            names.extend(OVSS_SUITE)
        elif token == "mess":
            names.extend(register_mess_datasets())
        else:
            # unknown names may be MESS ones; known MESS ones are re-rooted if $DETECTRON2_DATASETS changed
            if token not in DatasetCatalog.list() or is_mess_dataset(token):
                try:
                    register_mess_datasets()
                except ImportError as e:
                    logger.warning(str(e))
            names.append(token)
    if not names:
        raise ValueError(f"empty suite {spec!r}: use 'ovss', 'mess' or a comma-separated list of dataset names")
    return list(dict.fromkeys(names))  # drop duplicates, keep order


def apply_protocol(cfg) -> List[str]:
    """Set the evaluation protocol keys on a (mutable) cfg; returns them as "KEY value" strings."""
    cfg.merge_from_list(PROTOCOL_OPTS)
    return [f"{k} {v}" for k, v in zip(PROTOCOL_OPTS[::2], PROTOCOL_OPTS[1::2])]


def preparation_command(dataset_name: str) -> str:
    """How to prepare ``dataset_name``: the MESS package's entry point, else the ``prepare_command`` the
    dataset's registration put in its metadata (the standard benchmarks' scripts in ``datasets/``)."""
    if is_mess_dataset(dataset_name):
        return mess_prepare_command(dataset_name)
    if dataset_name in MetadataCatalog.list():
        command = MetadataCatalog.get(dataset_name).get("prepare_command", None)
        if command:
            return str(command)
    return "see datasets/README.md"


def dataset_size(dataset_name: str) -> int:
    """Number of images of a prepared dataset.

    Raises:
        KeyError: the name is not registered.
        FileNotFoundError / AssertionError / other: the registered loader could not find the files.
        RuntimeError: the loader found no image.
    """
    if dataset_name not in DatasetCatalog.list():
        raise KeyError(f"dataset {dataset_name!r} is not registered")
    size = len(DatasetCatalog.get(dataset_name))
    if size == 0:
        raise RuntimeError("no images found")
    return size


class _Progress(DatasetEvaluator):
    """Forwards the number of processed images (times the world size: every process sees its share)."""

    def __init__(self, callback: Callable[[int], None]):
        self._callback = callback

    def reset(self) -> None:
        pass

    def process(self, inputs, outputs) -> None:
        self._callback(len(inputs) * comm.get_world_size())

    def evaluate(self):
        return None


def evaluate_dataset(
    cfg,
    model: torch.nn.Module,
    dataset_name: str,
    output_folder: Optional[str] = None,
    on_images: Optional[Callable[[int], None]] = None,
) -> Dict[str, float]:
    """Evaluate ``model`` on one dataset with its own vocabulary and evaluator.

    The vocabulary (``metadata.vocabulary`` or ``stuff_classes``) is set on the model first, so its text
    embeddings are computed once per vocabulary.  Images go through detectron2's test-time
    ``DatasetMapper`` (as ``tools/train_net.py``); ground truth is read by the evaluator itself, so the
    records handed to the loader carry no ``sem_seg_file_name`` (a 16-bit TIFF would otherwise be decoded
    for nothing).

    Returns:
        the evaluator's ``sem_seg`` metrics (main process; ``{}`` on the others).
    """
    target = model.module if hasattr(model, "module") else model
    target.set_vocabulary(dataset_vocabulary(dataset_name))
    records = [{k: v for k, v in r.items() if k != "sem_seg_file_name"} for r in DatasetCatalog.get(dataset_name)]
    loader = build_detection_test_loader(
        records, mapper=DatasetMapper(cfg, is_train=False), num_workers=cfg.DATALOADER.NUM_WORKERS
    )
    evaluator = build_evaluator(cfg, dataset_name, output_folder)
    evaluators = [evaluator] if on_images is None else [evaluator, _Progress(on_images)]
    results = inference_on_dataset(model, loader, evaluators)
    return dict(results.get("sem_seg", {})) if results else {}


def _result_path(output_dir: str, dataset_name: str) -> str:
    return os.path.join(output_dir, dataset_name, RESULT_FILE)


def _json_safe(value) -> Optional[float]:
    # NaN (a class absent from both GT and predictions) is not valid JSON: write null.
    value = float(value)
    return None if math.isnan(value) else value


def write_json_atomic(path: str, payload: Dict) -> None:
    """Write JSON through a temporary file + rename so a killed run never leaves a half-written file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=1, allow_nan=False)
    os.replace(tmp, path)


def load_dataset_result(output_dir: str, dataset_name: str) -> Optional[Dict]:
    """The stored result of a finished dataset, or None."""
    path = _result_path(output_dir, dataset_name)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _plan(names: Sequence[str], output_dir: str):
    """Split ``names`` into finished (stored results), pending (prepared; with sizes) and skipped."""
    done, pending, skipped = {}, {}, {}
    for name in names:
        stored = load_dataset_result(output_dir, name)
        if stored is not None:
            done[name] = stored["metrics"]
            continue
        try:
            pending[name] = dataset_size(name)
        except Exception as e:  # noqa: BLE001 - any loader error means "not prepared"
            if isinstance(e, KeyError):
                skipped[name] = "not a registered dataset name (check the spelling; MESS names need mess-benchmark)"
                continue
            command = preparation_command(name)
            reason = f"not prepared ({type(e).__name__}: {e})"
            # the standard benchmarks' loaders already name their command; say it once
            skipped[name] = reason if command in reason else f"{reason}; prepare it with: {command}"
    return done, pending, skipped


def run_suite(
    cfg, model: torch.nn.Module, names: Sequence[str], output_dir: str, progress: bool = True
) -> SuiteOutcome:
    """Evaluate ``model`` on every dataset of ``names``, resuming from ``output_dir``.

    Every process must call it (the plan is decided on the main process and shared); only the main
    process writes files and holds the complete outcome.
    """
    plan = _plan(names, output_dir) if comm.is_main_process() else None
    done, pending, skipped = comm.all_gather(plan)[0]
    outcome = SuiteOutcome(results=dict(done), skipped=dict(skipped))
    main = comm.is_main_process()
    for name in done:
        logger.info(f"[done] {name}: results found in {_result_path(output_dir, name)}; not re-evaluated")
    for name, reason in skipped.items():
        logger.warning(f"[skip] {name}: {reason}")

    from tqdm import tqdm

    bar = tqdm(total=sum(pending.values()), unit="img", disable=not (main and progress), dynamic_ncols=True)
    try:
        for index, (name, size) in enumerate(pending.items()):
            bar.set_description(f"[{index + 1}/{len(pending)}] {name}")
            start, seen = time.perf_counter(), [0]

            def on_images(n: int) -> None:
                n = min(n, size - seen[0])  # the last shard may be short
                seen[0] += n
                bar.update(n)

            try:
                metrics = evaluate_dataset(cfg, model, name, os.path.join(output_dir, name), on_images)
            except Exception as e:  # noqa: BLE001 - record and go on with the next dataset
                logger.error(f"[fail] {name}: {type(e).__name__}: {e}\n{traceback.format_exc()}")
                outcome.failed[name] = f"{type(e).__name__}: {e}"
                bar.update(size - seen[0])
                continue
            bar.update(size - seen[0])
            if main:
                payload = {
                    "dataset": name,
                    "num_images": size,
                    "seconds": round(time.perf_counter() - start, 3),
                    "evaluator": evaluator_kind(name),
                    "metrics": {k: _json_safe(v) for k, v in metrics.items()},
                }
                write_json_atomic(_result_path(output_dir, name), payload)
                outcome.results[name] = payload["metrics"]
                logger.info(f"[eval] {name}: mIoU {metrics.get('mIoU', float('nan')):.2f} ({size} images)")
            outcome.evaluated.append(name)
    finally:
        bar.close()
    return outcome

