"""Hooks that make a resumed run continue the uninterrupted one (random streams saved with each checkpoint)."""
from typing import Any, Dict, List

from detectron2.engine import HookBase
from detectron2.utils import comm

from ..utils.rng import capture_rng_state


class RNGStateHook(HookBase):
    """Before each checkpoint, gathers every rank's random-number states into ``trainer.rng_states`` (the
    trainer's state_dict saves them; each rank restores its own on resume). Runs before PeriodicCheckpointer,
    with the same saving condition, so the states are those entering the next iteration."""

    def __init__(self, period: int, max_iter: int) -> None:
        self.period, self.max_iter = period, max_iter

    def after_step(self) -> None:
        it = self.trainer.iter
        if (it + 1) % self.period == 0 or it >= self.max_iter - 1:
            states: List[Dict[str, Any]] = comm.all_gather(capture_rng_state())
            self.trainer.rng_states = states
