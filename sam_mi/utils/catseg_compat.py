"""CAT-Seg v2 <-> SAM-MI state-dict key mapping, as pure functions.

CAT-Seg (CVPR 2024 code, checkpoints ``model_base.pth`` / ``model_large.pth``) stores
``sem_seg_head.predictor.clip_model.*`` (CLIP, split q/k/v as ours), ``sem_seg_head.predictor.transformer.*``
(the Aggregator) and ``upsample1.*`` / ``upsample2.*`` at the meta-architecture level (cvlab-kaist/CAT-Seg
cat_seg/cat_seg_model.py, cat_seg/modeling/transformer/cat_seg_predictor.py). SAM-MI keeps the same module
names below its stage prefixes (docs/CONTRACTS.md): ``clip.model.``, ``cost_head.aggregator.``,
``cost_head.upsample1/2.``.
"""
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Tuple

from torch import Tensor

__all__ = [
    "CATSEG_TO_SAMMI_PREFIXES",
    "DROPPED_KEY_PATTERNS",
    "ConversionReport",
    "unwrap_checkpoint",
    "convert_catseg_state_dict",
    "sammi_to_catseg_state_dict",
]

# (CAT-Seg prefix, SAM-MI prefix); the first match wins.
CATSEG_TO_SAMMI_PREFIXES: Tuple[Tuple[str, str], ...] = (
    ("sem_seg_head.predictor.clip_model.", "clip.model."),
    ("sem_seg_head.predictor.transformer.", "cost_head.aggregator."),
    ("upsample1.", "cost_head.upsample1."),
    ("upsample2.", "cost_head.upsample2."),
)

# Documented extras that are dropped instead of mapped.  CAT-Seg v2 registers its pixel statistics as
# non-persistent buffers, so they only appear in checkpoints written by other detectron2 code; SAM-MI takes
# them from the config.  ``...swin_block.block_2.attn_mask`` is NOT dropped: our Aggregator keeps CAT-Seg's
# name and registers it as a persistent buffer too.
DROPPED_KEY_PATTERNS: Tuple[str, ...] = (
    r"^(clip_)?pixel_(mean|std)$",
    r"^sem_seg_head\.predictor\.(clip_)?pixel_(mean|std)$",
)

# Present only in CAT-Seg v1 checkpoints (extra R101 / Swin backbone), which v2-style models cannot use.
_V1_MARKERS = ("backbone.",)


@dataclass
class ConversionReport:
    """What ``convert_catseg_state_dict`` did: per-target-prefix key counts, dropped and unmapped keys."""

    mapped: Dict[str, int] = field(default_factory=dict)
    dropped: List[str] = field(default_factory=list)
    unmapped: List[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"  {prefix:<14s} {count:5d} keys" for prefix, count in self.mapped.items()]
        lines.append(f"  dropped        {len(self.dropped):5d} keys {self.dropped[:8]}")
        if self.unmapped:
            lines.append(f"  unmapped       {len(self.unmapped):5d} keys {self.unmapped[:8]}")
        return "\n".join(lines)


def unwrap_checkpoint(checkpoint: Any) -> Dict[str, Tensor]:
    """detectron2 checkpoints hold the weights under ``"model"``; plain state dicts are returned as is."""
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("model"), Mapping):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"expected a state dict or {{'model': state_dict}}, got {type(checkpoint).__name__}")
    return dict(checkpoint)


def convert_catseg_state_dict(
    state_dict: Mapping[str, Tensor], allow_unmapped: bool = False
) -> Tuple[Dict[str, Tensor], ConversionReport]:
    """CAT-Seg v2 state dict -> SAM-MI state dict (same tensors, renamed keys) and a report.

    Keys matching ``DROPPED_KEY_PATTERNS`` are dropped.  Any other key outside the known prefixes raises
    a ValueError (a v1 checkpoint or a different model) unless ``allow_unmapped``, which drops them too.
    """
    v1 = [k for k in state_dict if k.startswith(_V1_MARKERS)]
    if v1:
        raise ValueError(
            f"this looks like a CAT-Seg v1 checkpoint (keys such as {v1[0]!r}): v1 models (model_final_*.pth, "
            "extra backbone) are not compatible; use the CVPR-2024 v2 weights model_base.pth / model_large.pth"
        )
    report = ConversionReport(mapped={target: 0 for _, target in CATSEG_TO_SAMMI_PREFIXES})
    out: Dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if any(re.match(p, key) for p in DROPPED_KEY_PATTERNS):
            report.dropped.append(key)
            continue
        for source, target in CATSEG_TO_SAMMI_PREFIXES:
            if key.startswith(source):
                out[target + key[len(source):]] = value
                report.mapped[target] += 1
                break
        else:
            report.unmapped.append(key)
    if report.unmapped and not allow_unmapped:
        raise ValueError(
            f"{len(report.unmapped)} CAT-Seg keys have no SAM-MI counterpart, e.g. {report.unmapped[:5]}; "
            "is this a CAT-Seg v2 checkpoint?  (Pass allow_unmapped=True / --allow-unmapped to drop them.)"
        )
    return out, report


def sammi_to_catseg_state_dict(state_dict: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Inverse mapping (SAM-MI -> CAT-Seg names) for the keys CAT-Seg has; other keys (TSPP, DMI, SAM) are
    left out.  Useful to export the CAT-Seg part of a SAM-MI model or to build test fixtures."""
    out: Dict[str, Tensor] = {}
    for key, value in state_dict.items():
        for source, target in CATSEG_TO_SAMMI_PREFIXES:
            if key.startswith(target):
                out[source + key[len(target):]] = value
                break
    return out
