"""Peak tensor memory of a block of code, overall and per named span, on the CPU and on CUDA.

CPU tensors have no ``torch.cuda.max_memory_allocated``. ``TensorMemoryTrace`` records the block with
``torch.profiler`` (``profile_memory=True``): every allocation and free made by PyTorch's allocator while the
trace is on is an event with its size and time. Replaying them in time order gives the live tensor bytes at
every moment, hence the peak of the block and, for every ``record_function`` span that opened in it (the
model's ``sam_mi/<stage>`` spans, sam_mi/utils/stage_timer.py), the peak inside the span and the rise over the
level at which the span began. Levels count the bytes allocated *during* the trace that are still alive:
tensors that existed before it (weights, caches) are not in them, and a free of such a tensor is not
reported by PyTorch (c10 ``ProfiledCPUMemoryReporter`` knows only the blocks it saw allocated).

What it counts: every tensor and oneDNN scratch buffer that goes through c10's allocator on the device. What
it misses: memory that BLAS libraries (MKL / OpenBLAS) or Python allocate by themselves, and allocations made
on other threads than the profiled one (ATen allocates outputs on the calling thread; run with one intra-op
thread, ``torch.set_num_threads(1)``, to leave nothing out). ``tracemalloc`` sees none of the tensor data and
a process's peak resident size (:func:`max_rss_mb`) includes the weights, the libraries and the allocator's
caching, so neither replaces this. On CUDA the overall peak is also read from ``torch.cuda.max_memory_allocated``
(minus what was allocated when the trace began), the authoritative number there.
"""
import bisect
import resource
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import torch
from torch.profiler import ProfilerActivity, profile

__all__ = ["TensorMemoryTrace", "max_rss_mb", "current_rss_mb"]

MiB = float(2**20)


class TensorMemoryTrace:
    """``with TensorMemoryTrace(device) as trace: ...``; then ``trace.peak_bytes`` and ``trace.spans()``."""

    def __init__(self, device: Optional[torch.device] = None, span_prefix: str = "sam_mi/") -> None:
        self.device = torch.device(device if device is not None else "cpu")
        self.span_prefix = span_prefix
        self.peak_bytes: int = 0  # the block's peak live bytes above the level at its start
        self.final_bytes: int = 0  # bytes allocated in the block and alive at its end
        self.cuda_peak_bytes: Optional[int] = None  # torch.cuda.max_memory_allocated - level at the start
        self._spans: Dict[str, Dict[str, int]] = {}
        self._prof: Optional[profile] = None
        self._cuda_base = 0

    def __enter__(self) -> "TensorMemoryTrace":
        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._cuda_base = torch.cuda.memory_allocated(self.device)
        self._prof = profile(activities=activities, profile_memory=True, record_shapes=False)
        self._prof.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.cuda_peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._cuda_base
        self._prof.__exit__(*exc)
        if exc[0] is None:
            self._replay(self._prof.profiler.kineto_results.events())

    def _replay(self, events) -> None:
        want = "CUDA" if self.device.type == "cuda" else "CPU"
        allocations: List[Tuple[int, int]] = []  # (time ns, signed bytes)
        spans: List[Tuple[str, int, int]] = []  # (name, start ns, end ns)
        for e in events:
            name = e.name()
            if name == "[memory]":
                if str(e.device_type()).rsplit(".", 1)[-1] == want:
                    allocations.append((e.start_ns(), e.nbytes()))
            elif name.startswith(self.span_prefix):
                spans.append((name[len(self.span_prefix):], e.start_ns(), e.end_ns()))
        allocations.sort(key=lambda a: a[0])
        times, levels, level = [], [], 0
        for t, nbytes in allocations:
            level += nbytes
            times.append(t)
            levels.append(level)
        self.peak_bytes = max(levels, default=0)
        self.final_bytes = level
        if self.cuda_peak_bytes is not None:
            self.peak_bytes = max(self.peak_bytes, self.cuda_peak_bytes)
        self._spans = _span_peaks(spans, times, levels)

    def spans(self) -> Dict[str, Dict[str, float]]:
        """Per span name: ``peak_mb`` (the highest level while it ran), ``rise_mb`` (that peak minus the level
        when it began: its own working set and outputs) and ``calls``; maxima over calls."""
        return {k: {"peak_mb": v["peak"] / MiB, "rise_mb": v["rise"] / MiB, "calls": v["calls"]}
                for k, v in self._spans.items()}


def _span_peaks(spans: List[Tuple[str, int, int]], times: List[int], levels: List[int]) -> Dict[str, Dict[str, int]]:
    """For each (name, start, end): the level just before ``start`` and the maximum level up to ``end``."""
    out: Dict[str, Dict[str, int]] = defaultdict(lambda: {"peak": 0, "rise": 0, "calls": 0})
    for name, start, end in spans:
        i = bisect.bisect_left(times, start)  # events before the span began
        j = bisect.bisect_right(times, end)  # events up to its end
        base = levels[i - 1] if i > 0 else 0
        peak = max([base] + levels[i:j])
        entry = out[name]
        entry["peak"] = max(entry["peak"], peak)
        entry["rise"] = max(entry["rise"], peak - base)
        entry["calls"] += 1
    return dict(out)


def max_rss_mb() -> float:
    """The process's peak resident set size so far (Linux reports kB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (MiB if sys.platform == "darwin" else 1024.0)


def current_rss_mb() -> Optional[float]:
    """The process's resident set size now (Linux ``/proc/self/statm``), None where unavailable."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * resource.getpagesize() / MiB
