"""State-dict conventions of SAMMI checkpoints.

* The frozen mask generator (SAM-H: 641M parameters) always comes from ``MODEL.SAM_MI.SAM.CHECKPOINT``: its
  weights are kept out of the checkpoints SAM-MI writes, and loading does not report them missing.
* Checkpoints written before the model was split into stages (attributes ``tspp``, ``upsample1``,
  ``aggregator``, ``dmi_low``, ... on the meta-architecture) load into the staged model: their keys are
  renamed by :data:`LEGACY_PREFIXES` before loading.
"""
from typing import Dict, Tuple

from torch import nn

FROZEN_PREFIX = "mask_generator."

#: (old prefix, new prefix) of the pre-stage layout; the first match wins.
LEGACY_PREFIXES: Tuple[Tuple[str, str], ...] = (
    ("tspp.", "prompter.head."),
    ("upsample1.", "cost_head.upsample1."),
    ("upsample2.", "cost_head.upsample2."),
    ("aggregator.", "cost_head.aggregator."),
    ("dmi_low.", "cost_head.dmi_low."),
    ("dmi_high.", "cost_head.dmi_high."),
)


def remap_legacy_keys(state_dict: Dict, prefix: str = "") -> int:
    """Rename pre-stage keys in place (below ``prefix``); returns how many were renamed."""
    renamed = 0
    for key in list(state_dict):
        if not key.startswith(prefix):
            continue
        local = key[len(prefix):]
        for old, new in LEGACY_PREFIXES:
            if local.startswith(old):
                state_dict[prefix + new + local[len(old):]] = state_dict.pop(key)
                renamed += 1
                break
    return renamed


def register_checkpoint_hooks(model: nn.Module) -> None:
    """Install the conventions above on the meta-architecture ``model``."""

    def drop_frozen(module, state_dict, prefix, local_metadata) -> None:
        for key in [k for k in state_dict if k.startswith(prefix + FROZEN_PREFIX)]:
            del state_dict[key]

    def rename_legacy(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                      error_msgs) -> None:
        remap_legacy_keys(state_dict, prefix)

    def ignore_missing_frozen(module, incompatible_keys) -> None:
        missing = incompatible_keys.missing_keys
        missing[:] = [k for k in missing if not k.startswith(FROZEN_PREFIX)]

    model.register_state_dict_post_hook(drop_frozen)
    model.register_load_state_dict_pre_hook(rename_legacy)
    model.register_load_state_dict_post_hook(ignore_missing_frozen)
