"""Logging per-batch statistics to detectron2's EventStorage from inside the model."""
from typing import Optional, Sequence

from detectron2.utils.events import get_event_storage


def storage_put(name: str, values: Optional[Sequence[int]]) -> None:
    """Log the mean of ``values`` as scalar ``name`` when a storage is active (training); no-op otherwise."""
    if not values:
        return
    try:
        get_event_storage().put_scalar(name, sum(values) / len(values))
    except AssertionError:  # no storage outside a trainer
        pass
