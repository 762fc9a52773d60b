"""Capturing and restoring every random-number state a training step uses (Python, NumPy, torch CPU and
CUDA), so that a resumed run continues the uninterrupted run's random streams, and a block (evaluation) can
run without moving them."""
import random
from contextlib import contextmanager
from typing import Any, Dict, Iterator

import numpy as np
import torch


def capture_rng_state() -> Dict[str, Any]:
    """The current states of Python's, NumPy's and torch's global generators (CUDA: every device), in types a
    ``torch.load(weights_only=True)`` accepts (tensors, ints, floats, strings and tuples of them)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block and put every global generator back as it was (whatever the block draws)."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
