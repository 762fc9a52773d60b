"""Disk cache of SAM image embeddings for test-time sweeps (`MODEL.SAM_MI.SAM.EMBEDDING_CACHE`).

SAM's image encoder is the largest cost of evaluating SAM-MI, and a sweep over test-time settings (Table 5's
sampling modes, Fig. 8's α_sma, the oracle, ...) encodes the same images again and again. The cache stores
one embedding per image and model, so a second evaluation of a dataset skips the encoder.

A key is a hash of everything the embedding depends on:
- the image: dtype, shape and bytes of the exact tensor given to `encode` (one row of the batch), so any
  change of the data pipeline (resize, crop, colour) is a miss, never a stale hit;
- the model: a fingerprint of SAM's state dict (every tensor's name, shape, dtype and bytes), so another
  checkpoint, type or variant never hits;
- the preprocessing and numerics: `PointPromptedSAM.cache_tag()` (wrapper class, input size, aspect rule,
  normalisation, autocast dtype).

It is for evaluation only: training crops are augmented and never repeat (the model passes
`use_cache=not self.training`). Entries are single files `<folder>/<key[:2]>/<key>.pt` written atomically
(temporary file in the same folder, flush + fsync, `os.replace`), so several processes may share a folder:
readers never see a partial file and two writers of one key both write a valid entry (the last one stays).
An unreadable or mismatching entry is reported with a warning, treated as a miss and rewritten.
Size: SAM's embedding is 256×64×64 float32 = 4 MiB per image.
"""

import hashlib
import os
import warnings
from typing import Optional

import torch
from torch import Tensor, nn

from ...utils.atomic_io import atomic_write

__all__ = ["SAMEmbeddingCache", "state_dict_fingerprint", "tensor_digest"]


def _tensor_bytes(t: Tensor) -> bytes:
    """Raw bytes of a tensor of any dtype (bf16 included), on the CPU, in C order."""
    t = t.detach().contiguous().cpu()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def tensor_digest(t: Tensor) -> str:
    """Hex digest of a tensor's dtype, shape and values."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(_tensor_bytes(t))
    return h.hexdigest()


def state_dict_fingerprint(model: nn.Module) -> str:
    """Hex digest of a model's state dict (names, shapes, dtypes and values of every tensor, sorted by name).

    Reads every byte of the weights once (about a second per GB); `PointPromptedSAM` computes it once."""
    h = hashlib.blake2b(digest_size=20)
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


class SAMEmbeddingCache:
    """Embeddings stored per key in `folder` (module docstring). Counts `hits` and `misses`."""

    def __init__(self, folder: str) -> None:
        if not folder:
            raise ValueError("SAMEmbeddingCache needs a folder (MODEL.SAM_MI.SAM.EMBEDDING_CACHE)")
        self.folder = os.path.abspath(os.path.expanduser(folder))
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as e:
            raise OSError(
                f"cannot create the SAM embedding cache folder {self.folder} (MODEL.SAM_MI.SAM.EMBEDDING_CACHE): {e}"
            ) from e
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key_for(image: Tensor, *parts: str) -> str:
        """Key of one image (a row [3,H,W] of the batch given to `encode`) and the strings that identify the
        model and its preprocessing (e.g. the weights fingerprint and `cache_tag()`)."""
        h = hashlib.blake2b(digest_size=24)
        for p in parts:
            h.update(str(p).encode())
            h.update(b"\0")
        h.update(tensor_digest(image).encode())
        return h.hexdigest()

    def path(self, key: str) -> str:
        return os.path.join(self.folder, key[:2], key + ".pt")

    def get(self, key: str) -> Optional[Tensor]:
        """The stored embedding (CPU) or None (absent, or unreadable: warned, the next `put` rewrites it)."""
        path = self.path(key)
        if not os.path.isfile(path):
            self.misses += 1
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(entry.get("embedding"), Tensor):
                raise ValueError("not an embedding entry of this key")
        except Exception as e:  # a torn copy, a foreign file, a truncated disk: recompute instead of failing
            warnings.warn(f"SAM embedding cache: ignoring unreadable entry {path} ({e}); it will be rewritten")
            self.misses += 1
            return None
        self.hits += 1
        return entry["embedding"]

    def put(self, key: str, embedding: Tensor) -> None:
        """Store `embedding` under `key` atomically (a copy on the CPU: a row of a batch is not saved with
        the rest of the batch's storage)."""
        entry = {"key": key, "embedding": embedding.detach().to("cpu", copy=True).contiguous()}
        with atomic_write(self.path(key), "wb") as f:  # concurrent writers of one key: the last rename wins
            torch.save(entry, f)

    def __repr__(self) -> str:
        return f"SAMEmbeddingCache({self.folder!r}, hits={self.hits}, misses={self.misses})"
