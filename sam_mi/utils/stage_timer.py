"""Named spans around the stages of SAM-MI's forward (Fig. 2), for profilers and latency benchmarks.

The model calls ``with stage("sam_encoder"):`` around each stage. Every span is a
``torch.profiler.record_function`` (visible in ``torch.profiler`` traces as ``sam_mi/<name>``); when a
:class:`StageTimer` is active, the span is also timed on the wall clock, with CUDA synchronised at both ends
so GPU work is counted in the stage that launched it. Without an active timer a span costs nothing more
than ``record_function``, so benchmarks time the model's own code and cannot drift from it.
"""
import contextvars
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Dict, Iterator, Optional

import torch

_ACTIVE: contextvars.ContextVar[Optional["StageTimer"]] = contextvars.ContextVar("sam_mi_stage_timer", default=None)


class StageTimer:
    """Accumulates wall time (seconds) and call counts per stage while active (``with StageTimer() as t:``)."""

    def __init__(self, device: Optional[torch.device] = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self.seconds: Dict[str, float] = defaultdict(float)
        self.calls: Dict[str, int] = defaultdict(int)
        self._token = None

    def synchronize(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> "StageTimer":
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.reset(self._token)

    def milliseconds(self, per: int = 1) -> Dict[str, float]:
        """Accumulated time per stage in ms, divided by ``per`` (e.g. the number of images)."""
        return {k: 1000.0 * v / per for k, v in self.seconds.items()}


@contextmanager
def stage(name: str) -> Iterator[None]:
    """A named span of the model's forward; timed when a :class:`StageTimer` is active."""
    timer = _ACTIVE.get()
    with torch.profiler.record_function(f"sam_mi/{name}"):
        if timer is None:
            yield
            return
        timer.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            timer.synchronize()
            timer.seconds[name] += time.perf_counter() - start
            timer.calls[name] += 1
