"""What produced a stored result, and whether a stored result may stand for a new run.

A suite result (``<output>/<dataset>/results.json``) records its provenance: the weight files (path, size,
streamed SHA-256), the config (flattened, and its SHA-256), the protocol flags, the vocabulary and the
number of images.  It is reused only when all of them equal the current run's; otherwise the dataset is
re-evaluated and :func:`provenance_difference` says which field differed.

Config keys that cannot change an evaluation result are left out of the comparison
(:data:`IGNORED_CONFIG_KEYS`: output folder, dataset lists (the suite sets the dataset), solver and
data-loader settings; the vocabulary file's path, whose names are compared instead).  The weight paths
are compared through the files' content, so a checkpoint moved or copied elsewhere still matches, and a
different file at the same path (``model_final.pth`` of a new training run) does not.
"""
import hashlib
import json
import os
import secrets
from typing import Any, Dict, List, Optional, Sequence

from ..utils.checkpoint_io import file_identity

__all__ = [
    "PROVENANCE_VERSION",
    "WEIGHT_KEYS",
    "IGNORED_CONFIG_KEYS",
    "flatten_config",
    "weights_identity",
    "build_provenance",
    "provenance_difference",
]

PROVENANCE_VERSION = 1
# Config keys naming weight files: compared by content (file_identity), not by path.
WEIGHT_KEYS = ("MODEL.WEIGHTS", "MODEL.SAM_MI.SAM.CHECKPOINT", "MODEL.SAM_MI.CLIP.PRETRAINED")
# Keys (or prefixes ending in ".") that do not change what an evaluation computes, or whose effect is
# compared directly (the vocabulary a VOCABULARY_JSON path names).
IGNORED_CONFIG_KEYS = (
    "OUTPUT_DIR",
    "MODEL.SAM_MI.VOCABULARY_JSON",
    "DATASETS.",
    "DATALOADER.",
    "SOLVER.",
    "TEST.EVAL_PERIOD",
    "VIS_PERIOD",
    "CUDNN_BENCHMARK",
) + WEIGHT_KEYS


def _ignored(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in IGNORED_CONFIG_KEYS)


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return repr(value)


def flatten_config(cfg) -> Dict[str, Any]:
    """``{"MODEL.SAM_MI.INFERENCE.SLIDING_WINDOW": True, ...}`` of a (yacs) config, JSON values, keys sorted,
    without :data:`IGNORED_CONFIG_KEYS`."""
    out: Dict[str, Any] = {}

    def walk(node, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, name + ".")
            elif not _ignored(name):
                out[name] = _plain(value)

    walk(cfg, "")
    return dict(sorted(out.items()))


def _sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _get(cfg, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node.get(part) if hasattr(node, "get") else None
        if node is None:
            return None
    return node


def weights_identity(cfg) -> Dict[str, Dict[str, Any]]:
    """``{key: {"path", "size", "sha256"}}`` for every :data:`WEIGHT_KEYS` entry that names a local file;
    other values (``""``, an open_clip tag such as "openai", a URL) are recorded as ``{"path": value}``.

    Without MODEL.WEIGHTS and with ``SEED < 0`` the model is a new random initialisation on every run: a
    one-off token is recorded so that its results are never taken for another run's.
    """
    out: Dict[str, Dict[str, Any]] = {}
    for key in WEIGHT_KEYS:
        value = _get(cfg, key)
        if value is None:
            continue
        value = str(value)
        out[key] = file_identity(value) if value and os.path.isfile(value) else {"path": value}
    if not _get(cfg, "MODEL.WEIGHTS") and int(_get(cfg, "SEED") or 0) < 0:
        out.setdefault("MODEL.WEIGHTS", {"path": ""})["random_initialisation"] = secrets.token_hex(8)
    return out


def build_provenance(
    cfg,
    weights: Dict[str, Dict[str, Any]],
    protocol: Sequence[str],
    vocabulary: Sequence[str],
    num_images: int,
) -> Dict[str, Any]:
    """The provenance record stored with a dataset's result (see the module docstring)."""
    config = flatten_config(cfg)
    return {
        "version": PROVENANCE_VERSION,
        "weights": weights,
        "config_sha256": _sha256_json(config),
        "config": config,
        "protocol": list(protocol),
        "vocabulary": list(vocabulary),
        "num_images": int(num_images),
    }


def _weight_key(identity: Dict[str, Any]) -> Any:
    return identity.get("sha256") or identity.get("random_initialisation") or identity.get("path")


def _short(identity: Optional[Dict[str, Any]]) -> str:
    if not identity:
        return "none"
    if identity.get("sha256"):
        return f"sha256 {identity['sha256'][:12]}, {identity.get('size', '?')} bytes, {identity.get('path')!r}"
    return repr(identity.get("path"))


def _list_difference(stored: List, current: List) -> str:
    if len(stored) != len(current):
        return f"{len(stored)} entries stored, {len(current)} now"
    i = next(i for i, (a, b) in enumerate(zip(stored, current)) if a != b)
    return f"first difference at #{i}: {stored[i]!r} stored, {current[i]!r} now"


def provenance_difference(stored: Any, current: Dict[str, Any]) -> Optional[str]:
    """None when ``stored`` (a result's provenance) matches ``current``; else which field differs."""
    if not isinstance(stored, dict):
        return "it has no provenance record (written by an older version of the suite)"
    if stored.get("version") != current["version"]:
        return f"provenance version {stored.get('version')!r} stored, {current['version']} now"
    stored_weights = stored.get("weights") or {}
    for key in sorted(set(stored_weights) | set(current["weights"])):
        old, new = stored_weights.get(key), current["weights"].get(key)
        if old is None or new is None or _weight_key(old) != _weight_key(new):
            return f"weights {key} differ: stored {_short(old)}; now {_short(new)}"
    if stored.get("config_sha256") != current["config_sha256"]:
        old_cfg, new_cfg = stored.get("config") or {}, current["config"]
        old_value = lambda k: old_cfg.get(k, "<absent>")  # noqa: E731
        new_value = lambda k: new_cfg.get(k, "<absent>")  # noqa: E731
        keys = [k for k in sorted(set(old_cfg) | set(new_cfg)) if old_value(k) != new_value(k)]
        shown = "; ".join(f"{k}: {old_value(k)!r} -> {new_value(k)!r}" for k in keys[:5])
        return f"config differs ({len(keys)} key(s): {shown}{'; ...' if len(keys) > 5 else ''})"
    if stored.get("protocol") != current["protocol"]:
        return f"protocol flags differ: stored {stored.get('protocol')}, now {current['protocol']}"
    if stored.get("vocabulary") != current["vocabulary"]:
        return "vocabulary differs: " + _list_difference(list(stored.get("vocabulary") or []), current["vocabulary"])
    if stored.get("num_images") != current["num_images"]:
        return f"number of images differs: {stored.get('num_images')} stored, {current['num_images']} now"
    return None
