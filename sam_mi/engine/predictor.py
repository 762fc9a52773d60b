"""A predictor for any image and any vocabulary, in the style of detectron2's ``DefaultPredictor``.

    predictor = SAMMIPredictor(cfg)                       # MODEL.WEIGHTS loaded, eval mode
    out = predictor("street.jpg", ["road", "car", "sky"])
    out.sem_seg        # LongTensor [H, W], class indices into the vocabulary
    out.scores         # [T, H, W] sigmoid scores
    out.tspp_prob      # [G, G] TSPP's sampling probabilities (Fig. 9), None without TSPP
    out.points         # [N_p, 2] SAM's prompts, (x, y) in [0, 1] of the image
    out.sam_masks      # Bool [N_s, h, w] SAM's masks;  out.masks: Bool [N_m, h, w] after SMAgg

Fig. 6 and Fig. 7 of the paper: with ``capture_figures=True`` the predictor also returns the aggregated cost
(the last aggregation layer's output, before the upsampling decoder) and the decoder guidance maps after the
high-frequency injection, read by forward hooks on the model's own modules.
"""
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from detectron2.modeling import build_model
from torch import Tensor

from ..data.image_io import read_image
from ..data.vocabulary import validate_vocabulary
from ..utils.checkpoint_io import CheckedCheckpointer

ImageInput = Union[str, os.PathLike, np.ndarray, Tensor]


@dataclass
class Prediction:
    """What :class:`SAMMIPredictor` returns for one image (shapes in the module docstring)."""

    vocabulary: List[str]
    sem_seg: Tensor
    scores: Tensor
    tspp_prob: Optional[Tensor] = None
    points: Optional[Tensor] = None
    sam_masks: Optional[Tensor] = None
    masks: Optional[Tensor] = None
    counts: Dict[str, int] = field(default_factory=dict)
    figures: Dict[str, Tensor] = field(default_factory=dict)


def check_vocabulary(vocabulary: Sequence[str]) -> List[str]:
    """A non-empty list of unique, non-empty class names (surrounding spaces removed), or a ValueError saying
    what is wrong (sam_mi/data/vocabulary.py's one validation)."""
    if isinstance(vocabulary, (list, tuple)):
        vocabulary = [n.strip() if isinstance(n, str) else n for n in vocabulary]
    return validate_vocabulary(vocabulary, "the vocabulary")


def image_to_tensor(image: ImageInput) -> Tensor:
    """A path, an HxWx3 / HxW uint8 array (RGB) or a [3, H, W] tensor -> uint8 tensor [3, H, W] RGB."""
    if isinstance(image, (str, os.PathLike)):
        image = read_image(str(image), format="RGB")  # 16-bit scaled, grey/RGBA converted, file named on errors
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"an image array must be HxW or HxWx3 (RGB), got shape {image.shape}")
        image = torch.as_tensor(np.ascontiguousarray(image[:, :, :3].transpose(2, 0, 1)))
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError("an image must be a file path, an HxWx3 RGB array or a [3, H, W] tensor")
    if image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"empty image of shape {tuple(image.shape)}")
    if image.dtype != torch.uint8:
        image = image.float().clamp(0, 255).round().to(torch.uint8)
    return image


class SAMMIPredictor:
    """Builds the model of ``cfg``, loads ``cfg.MODEL.WEIGHTS`` and predicts one image at a time.

    Inference follows the config (whole image, or the sliding window of the OVSS protocol); the intermediate
    results come from the first view's forward (the whole image in whole-image inference).
    """

    def __init__(self, cfg, capture_figures: bool = False) -> None:
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg).eval()
        if cfg.MODEL.WEIGHTS:
            CheckedCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        self.capture_figures = capture_figures

    @torch.inference_mode()
    def __call__(self, image: ImageInput, vocabulary: Sequence[str]) -> Prediction:
        names = check_vocabulary(vocabulary)
        tensor = image_to_tensor(image)
        model = self.model
        model.set_vocabulary(names)
        figures: Dict[str, Tensor] = {}
        hooks = self._figure_hooks(figures) if self.capture_figures else []
        try:
            x = {"image": tensor, "height": tensor.shape[1], "width": tensor.shape[2]}
            out = model([x], keep_intermediates=True)[0]
        finally:
            for h in hooks:
                h.remove()
        scores = out["sem_seg"].float().cpu()
        pred = Prediction(vocabulary=names, sem_seg=scores.argmax(0), scores=scores, counts=dict(out["sam_mi"]),
                          figures=figures)
        inter = out["intermediates"]
        if inter.get("tspp_prob") is not None:
            pred.tspp_prob = inter["tspp_prob"][0].float().cpu()
        proposals = inter.get("masks")
        if proposals is not None:
            pred.points = proposals.points[0].cpu()
            pred.sam_masks = proposals.sam_masks[0].cpu()
            pred.masks = proposals.masks[0, : proposals.num_masks[0]].cpu()
        return pred

    def _figure_hooks(self, figures: Dict[str, Tensor]) -> list:
        """Forward hooks reading Fig. 6 (aggregated cost before upsampling: [T, h, w, C] of the first image)
        and Fig. 7 (decoder guidance after high-frequency injection: [C, H, W] per map)."""
        head = self.model.cost_head
        hooks = []

        def keep(name, index=0):
            def hook(module, inputs, output):
                if name not in figures:  # the first forward (the whole image, or the first view)
                    figures[name] = output[index].detach().float().cpu()
            return hook

        aggregator = getattr(head, "aggregator", None)
        if aggregator is not None and len(getattr(aggregator, "layers", [])):
            hooks.append(aggregator.layers[-1].register_forward_hook(keep("aggregated_cost")))
        for i, module in enumerate(getattr(head, "dmi_high", None) or []):
            hooks.append(module.register_forward_hook(keep(f"guidance_injected_{i}")))
        return hooks
