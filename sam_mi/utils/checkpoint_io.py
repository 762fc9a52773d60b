"""Safe checkpoint loading with errors that name the file, the config key and what the file should be.

``torch.load(weights_only=True)`` refuses anything but tensors and plain containers, which is what every
checkpoint this project reads holds; for a file that is not such a checkpoint its errors name neither the
file nor the config key, and advise retrying with ``weights_only=False`` (which would run arbitrary code
from an untrusted file).  :func:`load_checkpoint_file` looks at the file's first bytes to say what it is
instead (empty, truncated zip archive, text, HTML page, Git LFS pointer, foreign format, pickle of Python
objects) and never gives that advice; an unsafe load happens only when the caller passes
``trust_pickle=True`` on an explicit user request (``tools/convert_catseg_checkpoint.py --trust-pickle``).

:func:`file_identity` is the streamed SHA-256 that records which weights produced a result.
"""
import hashlib
import os
import pickle
import re
import zipfile
from typing import Any, Dict

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = [
    "CheckpointFileError",
    "load_checkpoint_file",
    "describe_file",
    "is_torchscript_archive",
    "file_identity",
    "CheckedCheckpointer",
]

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"


class CheckpointFileError(ValueError):
    """A file given as a checkpoint that cannot be (safely) loaded; the message names file and key."""


def is_torchscript_archive(path: str) -> bool:
    """True for a TorchScript zip (``torch.jit.save``, e.g. OpenAI's CLIP ``ViT-B-16.pt``)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def describe_file(path: str) -> str:
    """What ``path`` looks like from its first bytes, for an error message ("an empty file", ...)."""
    size = os.path.getsize(path)
    if size == 0:
        return "an empty file"
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as z:
                z.namelist()
        except zipfile.BadZipFile:
            return f"a truncated or damaged zip archive ({size:,} bytes; an interrupted download or copy?)"
        return f"a zip archive ({size:,} bytes)"
    if head.startswith(_PICKLE_PROTO):
        return f"a pickle / legacy PyTorch file ({size:,} bytes)"
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the weights (run `git lfs pull` where the file comes from)"
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html", b"<?xml")):
        return "an HTML/XML page (a failed download, e.g. a login or error page?)"
    try:
        text = head.decode("utf-8")
        if all(c.isprintable() or c in "\r\n\t" for c in text):
            return f"a text file (starting {text[:40]!r})"
    except UnicodeDecodeError:
        pass
    return f"not a PyTorch file ({size:,} bytes of unrecognised content, first bytes {head[:8]!r})"


def _unsupported_detail(error: BaseException) -> str:
    """The one useful line of torch's weights-only error ("Unsupported global: GLOBAL numpy...")."""
    match = re.search(r"(Unsupported (?:global|operand|class)[^\n]*?)(?: was not an allowed| Please|\n|$)", str(error))
    return match.group(1).strip() if match else type(error).__name__


def load_checkpoint_file(
    path: str,
    config_key: str,
    expected: str,
    *,
    trust_pickle: bool = False,
    unsafe_hint: str = "",
) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors that name the file.

    Args:
        path: the file.
        config_key: where the path came from, e.g. "MODEL.WEIGHTS" or "--input".
        expected: what the file should be, e.g. "a SAM checkpoint (sam_vit_b_01ec64.pth)".
        trust_pickle: after a refused safe load of a readable pickle, load it with full unpickling.
            Only on an explicit user request: unpickling a file can run arbitrary code.
        unsafe_hint: appended to the error of a refused pickle (e.g. "re-run with --trust-pickle if you
            trust its origin"); empty for keys where an unsafe load is never offered.
    Raises:
        FileNotFoundError / CheckpointFileError naming ``config_key``, ``path`` and ``expected``.
    """
    where = f"{config_key} = {path!r}"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{where}: no such file; it should be {expected}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        kind = describe_file(path)
        readable = kind.startswith(("a zip archive", "a pickle"))
        if "Unsupported global" not in str(e) or not readable:
            detail = f" that cannot be read ({_unsupported_detail(e)})" if readable else ""
            raise CheckpointFileError(f"{where} is {kind}{detail}; it should be {expected}") from None
        if trust_pickle:
            return torch.load(path, map_location="cpu", weights_only=False)
        message = (
            f"{where} holds pickled Python objects besides tensors ({_unsupported_detail(e)}), which are not "
            f"loaded because unpickling can run arbitrary code; it should be {expected}, which holds only "
            "tensors and plain containers"
        )
        raise CheckpointFileError(message + (f". {unsafe_hint}" if unsafe_hint else "")) from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
        kind = describe_file(path)
        detail = "" if kind.startswith(("a truncated", "an empty", "a text", "an HTML", "a Git", "not a")) else (
            f" ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else 'unexpected end of file'})"
        )
        raise CheckpointFileError(f"{where} is {kind}{detail}; it should be {expected}") from None


def file_identity(path: str, chunk_bytes: int = 1 << 20) -> Dict[str, Any]:
    """``{"path", "size", "sha256"}`` of a file (content hash streamed in ``chunk_bytes`` blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_bytes), b""):
            digest.update(block)
    return {"path": os.path.abspath(path), "size": os.path.getsize(path), "sha256": digest.hexdigest()}


class CheckedCheckpointer(DetectionCheckpointer):
    """detectron2's ``DetectionCheckpointer`` whose PyTorch files go through :func:`load_checkpoint_file`.

    A missing file or one that is not a checkpoint raises an error naming ``config_key`` (default
    "MODEL.WEIGHTS"), the file and ``expected``, instead of fvcore's "Checkpoint ... not found!" assertion
    or torch's weights-only advice.  detectron2's own formats (``.pkl`` model-zoo files, URLs) are left to
    detectron2.
    """

    def __init__(self, model, save_dir: str = "", *, config_key: str = "MODEL.WEIGHTS",
                 expected: str = "a SAM-MI checkpoint written by tools/train_net.py "
                 "(or a CAT-Seg one converted by tools/convert_catseg_checkpoint.py)", **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.config_key, self.expected = config_key, expected

    def load(self, path: str, *args, **kwargs):
        if path and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(f"{self.config_key} = {path!r}: no such file; it should be {self.expected}")
        try:
            return super().load(path, *args, **kwargs)
        finally:
            # detectron2 clears this only when the load succeeds; a failed load would block the next one
            self._parsed_url_during_load = None

    def _torch_load(self, f: str):
        return load_checkpoint_file(f, self.config_key, self.expected)
