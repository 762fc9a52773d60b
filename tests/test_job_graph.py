"""The demo's job graph (sam_mi/engine/job_graph.py): dependencies respected, in workers and in-process."""
import os
import time

import pytest

from sam_mi.engine.job_graph import Job, run_job_graph


def _stamp(folder: str, name: str, seconds: float) -> tuple:
    """A job: (start, end) times; it also checks, through files, that its predecessors had finished."""
    start = time.time()
    time.sleep(seconds)
    with open(os.path.join(folder, name), "w") as f:
        f.write(str(os.getpid()))
    return start, time.time()


def _fail() -> None:
    raise RuntimeError("this job fails")


def test_jobs_start_after_their_dependencies_in_two_workers(tmp_path):
    d = str(tmp_path)
    jobs = {
        "a": Job(_stamp, (d, "a", 0.5)),
        "b": Job(_stamp, (d, "b", 0.0), ("a",)),
        "c": Job(_stamp, (d, "c", 0.0)),
        "d": Job(_stamp, (d, "d", 0.0), ("b", "c")),
    }
    times = run_job_graph(jobs, workers=2, log_dir=d)
    assert set(times) == set(jobs)
    assert times["b"][0] >= times["a"][1] and times["d"][0] >= max(times["b"][1], times["c"][1])
    pids = {open(tmp_path / n).read() for n in jobs}
    assert str(os.getpid()) not in pids and 1 <= len(pids) <= 2  # in the workers, never in this process
    assert (tmp_path / "log_a.txt").exists() and (tmp_path / "log_d.txt").exists()


def test_in_process_order_respects_dependencies(tmp_path):
    d = str(tmp_path)
    # listed before its dependency: the in-process run must still wait for "first"
    jobs = {"second": Job(_stamp, (d, "second", 0.0), ("first",)), "first": Job(_stamp, (d, "first", 0.01))}
    times = run_job_graph(jobs, workers=1)
    assert times["second"][0] >= times["first"][1]
    assert open(tmp_path / "first").read() == str(os.getpid())


def test_bad_graphs_and_failing_jobs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown jobs"):
        run_job_graph({"a": Job(_stamp, (str(tmp_path), "a", 0.0), ("missing",))}, workers=1)
    with pytest.raises(ValueError, match="cycle"):
        run_job_graph({"a": Job(_fail, (), ("b",)), "b": Job(_fail, (), ("a",))}, workers=1)
    with pytest.raises(RuntimeError, match="this job fails"):
        run_job_graph({"a": Job(_fail)}, workers=2, log_dir=str(tmp_path))
