"""MobileSAM (paper Table 9: "MobileSAM") behind `PointPromptedSAM`, built from `ultralytics`.

MobileSAM ("vit_t") is a TinyViT image encoder + SAM's prompt encoder / mask decoder (ultralytics
`build_mobile_sam`, the same modules and call signatures as segment-anything), so SAM's point decoding,
filters and NMS (`PointPromptedSAM`) apply unchanged. "tiny" = the same architecture (10.1M parameters)
randomly initialised and run at `image_size` (TinyViT's attention biases are per window, so `set_imgsz` makes
any side divisible by 16 work; 128 px encodes in ~0.06 s on one CPU core vs ~2.6 s at 1024).
"""
from typing import Optional

from detectron2.config import configurable
from torch import nn

from .checkpoint import OFFICIAL_IMAGE_SIZE, load_checkpoint, require_checkpoint
from .point_decoder import PointPromptedSAM
from .registry import mask_generator_args, register_mask_generator
from .ultralytics_support import _require_ultralytics

MOBILE_SAM_CHECKPOINT_URL = "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"


def build_mobile_sam_model(model_type: str, checkpoint: Optional[str], image_size: int) -> nn.Module:
    """ultralytics `SAMModel` with MobileSAM's TinyViT encoder ("vit_t" from `checkpoint`; "tiny" = random).

    checkpoint=None builds random weights; "" or a missing path raises (before importing ultralytics)."""
    if model_type not in ("vit_t", "tiny"):
        raise ValueError(f"unknown MobileSAM model type '{model_type}'; choose 'vit_t' (mobile_sam.pt) or 'tiny'")
    if model_type == "vit_t":
        if image_size != OFFICIAL_IMAGE_SIZE:
            raise ValueError(f"MobileSAM 'vit_t' runs at image size {OFFICIAL_IMAGE_SIZE}, got {image_size}")
        if checkpoint is not None:
            require_checkpoint(checkpoint, model_type, "mobile_sam", MOBILE_SAM_CHECKPOINT_URL)
    elif image_size % 16:
        raise ValueError(
            f"the tiny MobileSAM (TinyViT, output stride 16) needs image_size divisible by 16, got {image_size}"
        )
    _require_ultralytics()
    from ultralytics.models.sam.build import build_mobile_sam

    model = build_mobile_sam(None)  # never pass a path: ultralytics would try to download a missing one
    if image_size != OFFICIAL_IMAGE_SIZE:
        model.set_imgsz([image_size, image_size])  # TinyViT resolutions + prompt encoder grid
    if model_type == "vit_t" and checkpoint is not None:
        load_checkpoint(model, checkpoint, model_type, "mobile_sam", MOBILE_SAM_CHECKPOINT_URL)
    return model


@register_mask_generator("mobile_sam")
@configurable(from_config=mask_generator_args)
def build_mobile_sam_generator(model_type: str, checkpoint: str = "", image_size: int = OFFICIAL_IMAGE_SIZE,
                               *, random_init: bool = False, sdpa: bool = True, **decoding) -> PointPromptedSAM:
    """MobileSAM inside SAM's point-prompted decoding (AMG filters, box NMS); "tiny"/``random_init``: random.
    ``sdpa`` has no effect: TinyViT's attention is not segment-anything's."""
    random = model_type == "tiny" or random_init
    model = build_mobile_sam_model(model_type, None if random else checkpoint, image_size)
    return PointPromptedSAM(model, image_size, **decoding)
