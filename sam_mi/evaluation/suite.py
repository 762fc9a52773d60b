"""Evaluate a model over a suite of datasets: the loop behind ``tools/eval_all.py``.

A suite is resumable: each dataset's metrics, its Table 6 counts (points, SAM masks and injected masks
per image) and what produced them (weights, config, protocol flags, vocabulary, number of images) are
written to ``<output>/<dataset>/results.json`` (atomically, by the main process) when its evaluation
finishes.  A stored result is reused only when what produced it equals the current run
(:mod:`sam_mi.evaluation.provenance`); otherwise, or when the file is damaged, the dataset is evaluated
again with a line saying why.  Datasets that are not prepared are skipped with a line saying how to
prepare them; a dataset whose evaluation raises (or whose vocabulary is invalid) is recorded as failed
and the suite goes on, so a long run never dies halfway.
"""
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.evaluation import DatasetEvaluator, inference_on_dataset
from detectron2.utils import comm

from ..data.dataset_mapper import EvalDatasetMapper
from ..data.datasets.register_mess import is_mess_dataset, mess_prepare_command, register_mess_datasets
from ..data.vocabulary import VocabularyError, resolve_vocabulary
from .build import build_evaluator, evaluator_kind
from .provenance import build_provenance, provenance_difference, weights_identity
from .result_store import RESULT_FILE, json_number, load_stored_result, result_path, write_stored_result
from .sam_mi_stats import SAMMIStatsEvaluator

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
# The evaluation protocol of CAT-Seg (cvlab-kaist/CAT-Seg eval.sh: TEST.SLIDING_WINDOW True,
# MODEL.SEM_SEG_HEAD.POOLING_SIZES [1,1]), used for MESS too: sliding-window inference and no
# class-aggregation pooling.  Applied before the user's overrides.
PROTOCOL_OPTS = ["MODEL.SAM_MI.INFERENCE.SLIDING_WINDOW", True, "MODEL.SAM_MI.AGGREGATOR.POOLING_SIZES", [1, 1]]

@dataclass
class SuiteOutcome:
    """What a suite run produced (complete on the main process only)."""

    results: Dict[str, Dict[str, float]] = field(default_factory=dict)  # dataset -> evaluator metrics
    stats: Dict[str, Dict[str, float]] = field(default_factory=dict)  # dataset -> Table 6 counts per image
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
    vocabulary: Optional[Sequence[str]] = None,
) -> Tuple[Dict[str, float], Dict[str, float]]:
    """Evaluate ``model`` on one dataset with its own vocabulary and evaluator.

    The vocabulary (``resolve_vocabulary(dataset_name, MODEL.SAM_MI.VOCABULARY_JSON)`` unless given) is set
    on the model first, so its text embeddings are computed once per vocabulary.  Images go through
    :class:`~sam_mi.data.dataset_mapper.EvalDatasetMapper` (detectron2's test-time mapper with the
    project's image reader); ground truth is read and checked by the evaluator itself, so the records
    handed to the loader carry no ``sem_seg_file_name`` (a 16-bit TIFF would otherwise be decoded for
    nothing).

    Returns:
        ``(metrics, stats)``: the evaluator's ``sem_seg`` metrics and the per-image SAM-MI counts
        (:class:`~sam_mi.evaluation.sam_mi_stats.SAMMIStatsEvaluator`; ``{}`` for a model that reports
        none); both ``{}`` on processes other than the main one.
    """
    if vocabulary is None:
        vocabulary = resolve_vocabulary(dataset_name, cfg.MODEL.SAM_MI.VOCABULARY_JSON)
    target = model.module if hasattr(model, "module") else model
    target.set_vocabulary(list(vocabulary))
    records = [{k: v for k, v in r.items() if k != "sem_seg_file_name"} for r in DatasetCatalog.get(dataset_name)]
    loader = build_detection_test_loader(records, mapper=EvalDatasetMapper(cfg), num_workers=cfg.DATALOADER.NUM_WORKERS)
    evaluators = [build_evaluator(cfg, dataset_name, output_folder), SAMMIStatsEvaluator()]
    if on_images is not None:
        evaluators.append(_Progress(on_images))
    results = inference_on_dataset(model, loader, evaluators) or {}
    return dict(results.get("sem_seg", {})), dict(results.get("sam_mi", {}))


@dataclass
class _Plan:
    done: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # dataset -> stored record (reused)
    pending: Dict[str, Tuple[int, Dict[str, Any]]] = field(default_factory=dict)  # dataset -> (size, provenance)
    skipped: Dict[str, str] = field(default_factory=dict)
    failed: Dict[str, str] = field(default_factory=dict)


def _not_prepared(name: str, error: Exception) -> str:
    if isinstance(error, KeyError):
        return "not a registered dataset name (check the spelling; MESS names need mess-benchmark)"
    command = preparation_command(name)
    reason = f"not prepared ({type(error).__name__}: {error})"
    # the standard benchmarks' loaders already name their command; say it once
    return reason if command in reason else f"{reason}; prepare it with: {command}"


def _plan(cfg, names: Sequence[str], output_dir: str, protocol: Sequence[str]) -> _Plan:
    """Decide per dataset: reuse its stored result, evaluate it, skip it (not prepared) or fail it."""
    plan = _Plan()
    weights = weights_identity(cfg)
    for name in names:
        path = result_path(output_dir, name)
        try:
            size = dataset_size(name)
        except Exception as e:  # noqa: BLE001 - any loader error means "not prepared"
            plan.skipped[name] = _not_prepared(name, e)
            if os.path.isfile(path):
                logger.warning(f"[skip] {name}: the stored result {path} is not reused: the dataset cannot be read")
            continue
        try:
            vocabulary = resolve_vocabulary(name, cfg.MODEL.SAM_MI.VOCABULARY_JSON)
        except VocabularyError as e:
            plan.failed[name] = f"{type(e).__name__}: {e}"
            continue
        provenance = build_provenance(cfg, weights, protocol, vocabulary, size)
        record, problem = load_stored_result(path)
        if problem is not None:
            logger.warning(f"[redo] {name}: {path} is damaged ({problem}); evaluating the dataset again")
        elif record is not None:
            difference = provenance_difference(record.get("provenance"), provenance)
            if difference is None:
                plan.done[name] = record
                continue
            logger.warning(f"[redo] {name}: {path} was produced differently: {difference}; evaluating again")
        plan.pending[name] = (size, provenance)
    return plan


def run_suite(
    cfg,
    model: torch.nn.Module,
    names: Sequence[str],
    output_dir: str,
    progress: bool = True,
    protocol: Sequence[str] = (),
) -> SuiteOutcome:
    """Evaluate ``model`` on every dataset of ``names``, resuming from ``output_dir``.

    Every process must call it (the plan is decided on the main process and shared); only the main
    process writes files and holds the complete outcome.

    Args:
        protocol: the protocol flags applied to ``cfg`` ("KEY value" strings, :func:`apply_protocol`),
            recorded with each result.
    """
    plan: _Plan = comm.all_gather(_plan(cfg, names, output_dir, protocol) if comm.is_main_process() else None)[0]
    outcome = SuiteOutcome(
        results={n: r["metrics"] for n, r in plan.done.items()},
        stats={n: r.get("sam_mi") or {} for n, r in plan.done.items()},
        skipped=dict(plan.skipped),
        failed=dict(plan.failed),
    )
    main = comm.is_main_process()
    for name in plan.done:
        logger.info(f"[done] {name}: results found in {result_path(output_dir, name)} (same weights, config, "
                    "protocol, vocabulary and images); not re-evaluated")
    for name, reason in plan.skipped.items():
        logger.warning(f"[skip] {name}: {reason}")
    for name, reason in plan.failed.items():
        logger.error(f"[fail] {name}: {reason}")

    from tqdm import tqdm

    bar = tqdm(total=sum(size for size, _ in plan.pending.values()), unit="img", disable=not (main and progress),
               dynamic_ncols=True)
    try:
        for index, (name, (size, provenance)) in enumerate(plan.pending.items()):
            bar.set_description(f"[{index + 1}/{len(plan.pending)}] {name}")
            start, seen = time.perf_counter(), [0]

            def on_images(n: int) -> None:
                n = min(n, size - seen[0])  # the last shard may be short
                seen[0] += n
                bar.update(n)

            try:
                metrics, stats = evaluate_dataset(cfg, model, name, os.path.join(output_dir, name), on_images,
                                                  vocabulary=provenance["vocabulary"])
            except Exception as e:  # noqa: BLE001 - record and go on with the next dataset
                logger.error(f"[fail] {name}: {type(e).__name__}: {e}\n{traceback.format_exc()}")
                outcome.failed[name] = f"{type(e).__name__}: {e}"
                bar.update(size - seen[0])
                continue
            bar.update(size - seen[0])
            if main:
                record = {
                    "dataset": name,
                    "num_images": size,
                    "seconds": round(time.perf_counter() - start, 3),
                    "evaluator": evaluator_kind(name),
                    "metrics": {k: json_number(v) for k, v in metrics.items()},
                    "sam_mi": stats,
                    "provenance": provenance,
                }
                write_stored_result(result_path(output_dir, name), record)
                outcome.results[name] = record["metrics"]
                outcome.stats[name] = stats
                logger.info(f"[eval] {name}: mIoU {metrics.get('mIoU', float('nan')):.2f} ({size} images)")
            outcome.evaluated.append(name)
    finally:
        bar.close()
    return outcome
