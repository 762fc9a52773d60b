"""Helpers shared by the ``datasets/prepare_*.py`` scripts (argument parsing, checks, progress)."""
import argparse
import os
import sys
from multiprocessing import Pool
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

from tqdm import tqdm

# the scripts run as `python datasets/prepare_x.py`; make the repository's sam_mi package importable
_REPO_ROOT = Path(__file__).resolve().parent.parent
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))


class RawDataMissing(FileNotFoundError):
    """A raw download is missing; the message says what to download and where to put it."""


def parse_args(description: str, argv: Optional[Sequence[str]] = None, extra: Callable = None) -> argparse.Namespace:
    """``--root`` (default ``$DETECTRON2_DATASETS`` or ``datasets``) and ``--workers``, plus ``extra(parser)``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(os.environ.get("DETECTRON2_DATASETS", "datasets")),
        help="dataset root (default: $DETECTRON2_DATASETS, else ./datasets)",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes used for the conversion")
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def require(path: Path, what: str, how: str) -> Path:
    """Return ``path`` if it exists, else raise RawDataMissing saying what it is and how to get it."""
    if not path.exists():
        raise RawDataMissing(f"missing {what}: {path} does not exist.\n  {how}\n  (see datasets/README.md)")
    return path


def run_parallel(fn: Callable, jobs: List[Tuple], workers: int, desc: str) -> List:
    """``[fn(*job) for job in jobs]`` with a tqdm bar, in ``workers`` processes when > 1."""
    if workers <= 1:
        return [fn(*job) for job in tqdm(jobs, desc=desc)]
    with Pool(workers) as pool:
        return list(tqdm(pool.imap(_star, [(fn, job) for job in jobs], chunksize=16), total=len(jobs), desc=desc))


def _star(fn_job):
    fn, job = fn_job
    return fn(*job)


def run_main(main: Callable[[Optional[Sequence[str]]], None]) -> None:
    """Run a script's ``main``; a missing raw file ends the script with its message and exit code 1."""
    try:
        main(None)
    except RawDataMissing as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def files_with_suffix(folder: Path, suffix: str) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(suffix))


def ensure_dirs(paths: Iterable[Path]) -> None:
    for p in paths:
        p.mkdir(parents=True, exist_ok=True)
