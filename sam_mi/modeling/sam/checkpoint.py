"""Checkpoint handling shared by every mask generator: existence checks that name the download URL and the
config key, shape checks that name the type a mismatching file looks like, optional-package imports.
"""
import importlib
import os
from typing import Dict, Mapping, Optional

import torch
from torch import nn

from ...utils.checkpoint_io import load_checkpoint_file

CONFIG_KEY = "MODEL.SAM_MI.SAM.CHECKPOINT"

SAM_CHECKPOINT_URLS: Dict[str, str] = {
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
}

# Image-encoder width -> official type; used to tell the user which type a mismatching checkpoint is.
_WIDTH_TO_TYPE = {1280: "vit_h", 1024: "vit_l", 768: "vit_b", 32: "tiny"}

#: Official SAM's input side; its position embeddings and rel-pos tables are sized for it.
OFFICIAL_IMAGE_SIZE = 1024


def optional_import(module: str, pip_name: str, extra: str = ""):
    """Import an optional package or say which pip package provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"this SAM variant needs the '{pip_name}' package: pip install {pip_name}{extra}") from e


def infer_sam_type(state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    """Guess the SAM type of a state dict from its image-encoder width (1280/1024/768 -> vit_h/l/b)."""
    for key, dim in (("image_encoder.pos_embed", -1), ("image_encoder.patch_embed.proj.weight", 0)):
        if key in state_dict:
            width = int(state_dict[key].shape[dim])
            return _WIDTH_TO_TYPE.get(width, f"an image encoder of width {width}")
    return None


def _missing_checkpoint_message(checkpoint: str, model_type: str, variant: str, url: Optional[str]) -> str:
    where = f"'{checkpoint}' does not exist" if checkpoint else "no checkpoint path was given"
    fetch = f"Download it from {url}" if url else "Download the official checkpoint of that type"
    return (
        f"{variant} checkpoint for model type '{model_type}': {where}. {fetch} and set {CONFIG_KEY} to its "
        f"path (or MODEL.SAM_MI.SAM.RANDOM_INIT True for random weights, e.g. in latency benchmarks)."
    )


def require_checkpoint(checkpoint: str, model_type: str, variant: str = "sam", url: Optional[str] = None) -> None:
    """Raise FileNotFoundError naming the download URL and the config key unless `checkpoint` is a file."""
    if not checkpoint or not os.path.isfile(checkpoint):
        raise FileNotFoundError(_missing_checkpoint_message(checkpoint, model_type, variant, url))


def load_checkpoint(
    model: nn.Module,
    checkpoint: str,
    model_type: str,
    variant: str = "sam",
    url: Optional[str] = None,
    strict: bool = True,
) -> None:
    """Load `checkpoint` into `model` with clear errors.

    Raises FileNotFoundError (naming `url` and the config key) for a missing file, and ValueError naming
    the type the checkpoint looks like when tensor shapes do not match `model_type`.
    `strict=False` is for variants whose official loader is non-strict (HQ-SAM), shape checks still apply.
    """
    require_checkpoint(checkpoint, model_type, variant, url)
    state = load_checkpoint_file(
        checkpoint, CONFIG_KEY, f"a {variant} checkpoint of model type '{model_type}'"
        + (f" (the official one: {url})" if url else "")
    )
    for wrapper in ("model", "state_dict"):  # SAM2 / training checkpoints wrap the weights
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ValueError(f"{checkpoint} does not hold a state dict (got {type(state).__name__})")
    own = model.state_dict()
    bad = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if bad:
        looks = infer_sam_type(state)
        hint = f"it looks like a '{looks}' checkpoint" if looks else "its type could not be inferred"
        raise ValueError(
            f"{variant} checkpoint {checkpoint} does not match model type '{model_type}': {len(bad)} tensors "
            f"have other shapes (e.g. {bad[0]}: {tuple(state[bad[0]].shape)} vs {tuple(own[bad[0]].shape)}); "
            f"{hint}. Set MODEL.SAM_MI.SAM.MODEL_TYPE to the checkpoint's type."
        )
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and (missing or unexpected):
        raise ValueError(
            f"{variant} checkpoint {checkpoint} does not fit model type '{model_type}': "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}). "
            f"Is it a checkpoint of another SAM variant (MODEL.SAM_MI.SAM.VARIANT)?"
        )
    model.load_state_dict(state, strict=False)
