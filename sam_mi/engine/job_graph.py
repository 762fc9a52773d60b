"""Run a few dependent jobs (the demo's trainings) in worker processes, each as soon as its inputs exist.

The demo's jobs form a small graph: the CLIP warm-up and the tiny SAM need nothing; stage 1, the baseline and
the oracle-mask run need the warm-up's CLIP; stage 2 needs stage 1 and the SAM. On a 2-core machine two
one-thread workers finish such a graph in about half the serial time (the tiny models are too small for a
second thread to pay), provided a free worker always takes the first job, in the given order, whose
dependencies are done. Outputs pass between jobs as files (checkpoints at known paths), so a job's result is
only waited for, never sent to another job.
"""
import logging
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Sequence

import torch
from detectron2.utils.logger import setup_logger

__all__ = ["Job", "run_job_graph"]


@dataclass(frozen=True)
class Job:
    """``fn(*args)`` once the jobs named in ``after`` are done. ``fn`` must be a module-level function (workers
    are spawned processes) and ``args`` picklable."""

    fn: Callable[..., Any]
    args: Sequence[Any] = ()
    after: Sequence[str] = field(default_factory=tuple)


def _in_worker(fn: Callable[..., Any], args: Sequence[Any], log_file: str, threads: int) -> Any:
    """A job in a worker: its own log file (the sam_mi and detectron2 loggers), ``threads`` torch threads."""
    torch.set_num_threads(threads)
    for name, abbrev in (("sam_mi", None), ("detectron2", "d2")):
        logging.getLogger(name).handlers.clear()  # a worker's previous job logged to its own file
        # past setup_logger's lru_cache: the handlers it would skip as "already added" were just removed
        setup_logger.__wrapped__(output=log_file or None, name=name, abbrev_name=abbrev)
    return fn(*args)


def _check(jobs: Mapping[str, Job]) -> None:
    for name, job in jobs.items():
        unknown = [d for d in job.after if d not in jobs]
        if unknown:
            raise ValueError(f"job '{name}' comes after unknown jobs {unknown}; known: {list(jobs)}")
    done: set = set()
    while len(done) < len(jobs):  # Kahn's algorithm: a cycle leaves jobs that never become ready
        ready = [n for n, j in jobs.items() if n not in done and all(d in done for d in j.after)]
        if not ready:
            raise ValueError(f"the jobs {sorted(set(jobs) - done)} depend on each other in a cycle")
        done.update(ready)


def run_job_graph(jobs: Mapping[str, Job], workers: int = 2, log_dir: str = "") -> Dict[str, Any]:
    """Run ``jobs`` ({name: Job}) and return {name: fn's result}.

    ``workers`` > 1: that many spawned processes of one torch thread each, a free one always taking the first
    ready job in ``jobs``' order (list the longest chains first); job ``name`` logs to
    ``<log_dir>/log_<name>.txt``. ``workers`` <= 1: in this process, in an order that respects ``after``.
    A failing job's exception is raised here once the jobs already running have finished.
    """
    _check(jobs)
    results: Dict[str, Any] = {}
    if workers <= 1:
        while len(results) < len(jobs):
            name = next(n for n, j in jobs.items() if n not in results and all(d in results for d in j.after))
            results[name] = jobs[name].fn(*jobs[name].args)
        return results
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
    logger = logging.getLogger("sam_mi.demo")
    pending = dict(jobs)
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's thread pools
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        running: Dict[Any, str] = {}
        while pending or running:
            for name in list(pending):
                if len(running) < workers and all(d in results for d in pending[name].after):
                    job = pending.pop(name)
                    log_file = os.path.join(log_dir, f"log_{name}.txt") if log_dir else ""
                    logger.info("job '%s' started (log: %s)", name, log_file or "none")
                    running[pool.submit(_in_worker, job.fn, tuple(job.args), log_file, 1)] = name
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                name = running.pop(future)
                results[name] = future.result()  # raises the job's exception (the pool waits for the others)
                logger.info("job '%s' done", name)
    return results
