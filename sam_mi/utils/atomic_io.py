"""Atomic file writes: a reader (or a resumed run) sees the old file or the complete new one, never a part.

The data goes to a temporary file in the target's folder, is flushed and fsync'ed (so that a power loss
after the rename cannot leave an empty file that the rename already made visible), then renamed over
the target with ``os.replace`` (atomic on POSIX and Windows).  The folder is fsync'ed too where the OS
allows it, so that the rename itself is durable.
"""
import json
import os
import tempfile
from contextlib import contextmanager
from typing import IO, Any, Iterator

__all__ = ["atomic_write", "write_json_atomic", "write_text_atomic"]


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """``with atomic_write(path, "wb") as f: ...``; on an exception the target is left untouched."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(folder)


def write_json_atomic(path: str, payload: Any) -> None:
    """JSON (indent 1, NaN refused: write None for missing numbers) through :func:`atomic_write`."""
    text = json.dumps(payload, indent=1, allow_nan=False)  # serialise first: a bad value never truncates
    write_text_atomic(path, text)


def write_text_atomic(path: str, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
