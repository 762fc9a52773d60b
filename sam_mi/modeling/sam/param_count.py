"""Parameter counts of SAM models (paper Table 9's "Params (M)" and Table 10's frozen total)."""
from typing import Dict

from .hq_sam import build_hq_sam_model
from .sam import build_official_architecture, build_tiny_sam


def sam_param_count(model_type: str, variant: str = "sam") -> Dict[str, int]:
    """Parameter counts of a randomly initialised model: {"total", "image_encoder", "prompt_encoder",
    "mask_decoder"}. Builds the full model (vit_h: 641M parameters, ~2.6 GB), so use it in tools, not tests."""
    if variant == "sam":
        model = build_tiny_sam(128) if model_type == "tiny" else build_official_architecture(model_type)
    elif variant == "hq_sam":
        model = build_hq_sam_model(model_type, checkpoint=None, image_size=128 if model_type == "tiny" else 1024)
    else:
        raise ValueError(f"sam_param_count supports variants 'sam' and 'hq_sam', got '{variant}'")
    counts = {"total": sum(p.numel() for p in model.parameters())}
    for name in ("image_encoder", "prompt_encoder", "mask_decoder"):
        counts[name] = sum(p.numel() for p in getattr(model, name).parameters())
    return counts
