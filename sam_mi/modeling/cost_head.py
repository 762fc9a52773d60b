"""The mask-injected cost head (Fig. 2, right): CAT-Seg's cost aggregation with DMI (Sec. 3.4) at its two
injection points.

* low frequency (Eq. 8-10): F_mcr replaces CLIP's last-layer features as the aggregator's appearance guidance;
* high frequency (Eq. 11-12): SAM's mask edges are added to the two upsampled guidance maps of the decoder.

Without masks (or with DMI off) this is CAT-Seg's head: cvlab-kaist/CAT-Seg cat_seg/cat_seg_model.py
(``upsample1``/``upsample2``) and cat_seg/modeling/transformer/model.py (the aggregator).
"""
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.config import configurable
from detectron2.utils.registry import Registry
from torch import Tensor, nn

from ..utils.stage_timer import stage
from .aggregator import Aggregator
from .dmi import HighFrequencyInjection, LowFrequencyInjection, resize_masks

COST_HEAD_REGISTRY = Registry("SAM_MI_COST_HEAD")
COST_HEAD_REGISTRY.__doc__ = "Heads turning CLIP features, text embeddings and masks into class logits."


@COST_HEAD_REGISTRY.register()
class MaskInjectedCostHead(nn.Module):
    """CAT-Seg aggregation + DMI. Parameter names (``upsample1``, ``aggregator``, ...) follow CAT-Seg's."""

    @configurable
    def __init__(
        self,
        *,
        clip_width: int,
        upsample_dims: Sequence[int],
        aggregator: Aggregator,
        dmi_low: Optional[LowFrequencyInjection] = None,
        dmi_high: Optional[nn.ModuleList] = None,
    ) -> None:
        """
        Args:
            clip_width: W, channels of CLIP's intermediate guidance features.
            upsample_dims: channels of the two upsampled guidance maps (CAT-Seg: 256, 128).
            aggregator: CAT-Seg's spatial + class aggregation and upsampling decoder.
            dmi_low / dmi_high: the two injections; None switches each off (Table 4).
        """
        super().__init__()
        # CAT-Seg's guidance upsampling of the two intermediate CLIP blocks (x2 and x4).
        self.upsample1 = nn.ConvTranspose2d(clip_width, upsample_dims[0], kernel_size=2, stride=2)
        self.upsample2 = nn.ConvTranspose2d(clip_width, upsample_dims[1], kernel_size=4, stride=4)
        self.aggregator = aggregator
        self.dmi_low = dmi_low
        self.dmi_high = dmi_high

    @classmethod
    def from_config(cls, cfg, clip_width: int, embed_dim: int, feature_resolution: Tuple[int, int]) -> Dict:
        a, d = cfg.MODEL.SAM_MI.AGGREGATOR, cfg.MODEL.SAM_MI.DMI
        aggregator = Aggregator(
            text_guidance_dim=embed_dim,
            text_guidance_proj_dim=a.TEXT_GUIDANCE_PROJ_DIM,
            appearance_guidance_dim=embed_dim,
            appearance_guidance_proj_dim=a.APPEARANCE_GUIDANCE_PROJ_DIM,
            decoder_dims=tuple(a.DECODER_DIMS),
            decoder_guidance_dims=tuple(a.DECODER_GUIDANCE_DIMS),
            decoder_guidance_proj_dims=tuple(a.DECODER_GUIDANCE_PROJ_DIMS),
            num_layers=a.NUM_LAYERS,
            nheads=a.NUM_HEADS,
            hidden_dim=a.HIDDEN_DIM,
            pooling_size=tuple(a.POOLING_SIZES),
            feature_resolution=tuple(feature_resolution),
            window_size=a.WINDOW_SIZE,
            attention_type=a.ATTENTION_TYPE,
            prompt_channel=1,
            pad_len=a.PAD_LEN,
            class_chunk=a.CLASS_CHUNK,
        )
        dmi_high = None
        if d.HIGH_ENABLED:
            dmi_high = nn.ModuleList(HighFrequencyInjection(c, d.HIGH_HIDDEN_DIM) for c in a.DECODER_GUIDANCE_DIMS)
        return {
            "clip_width": clip_width,
            "upsample_dims": tuple(a.DECODER_GUIDANCE_DIMS),
            "aggregator": aggregator,
            "dmi_low": LowFrequencyInjection(embed_dim, d.NUM_HEADS) if d.LOW_ENABLED else None,
            "dmi_high": dmi_high,
        }

    @property
    def injects(self) -> bool:
        """Whether masks change anything (at least one of the two injections is on)."""
        return self.dmi_low is not None or self.dmi_high is not None

    def forward(self, dense: Tensor, guidance: List[Tensor], text: Tensor, masks: Optional[Tensor] = None) -> Tensor:
        """Class logits [B,T,4h,4w].

        Args:
            dense: CLIP's dense features F_l^v [B,D,h,w]; guidance: two intermediate blocks' outputs [B,W,h,w];
            text: class embeddings [T,P,D]; masks: SMAgg's masks Bool[B,N,4h,4w] or None (no injection).
        """
        with stage("cost_head"):
            res4, res5 = self.upsample1(guidance[0]), self.upsample2(guidance[1])
            appearance = dense
            if masks is not None:
                if self.dmi_low is not None:  # Eq. 8-10: F_mcr replaces F_l^v as appearance guidance
                    appearance = self.dmi_low(dense, resize_masks(masks, tuple(dense.shape[-2:])))
                if self.dmi_high is not None:  # Eq. 11-12 on both decoder guidance maps
                    res4 = self.dmi_high[0](res4, resize_masks(masks, tuple(res4.shape[-2:])))
                    res5 = self.dmi_high[1](res5, resize_masks(masks, tuple(res5.shape[-2:])))
            text_b = text.unsqueeze(0).expand(dense.shape[0], -1, -1, -1)
            return self.aggregator(dense, text_b, appearance, [res4, res5])


def build_cost_head(cfg, clip_width: int, embed_dim: int, feature_resolution: Tuple[int, int]) -> nn.Module:
    """The cost head named by ``MODEL.SAM_MI.COST_HEAD.NAME``."""
    return COST_HEAD_REGISTRY.get(cfg.MODEL.SAM_MI.COST_HEAD.NAME)(
        cfg, clip_width=clip_width, embed_dim=embed_dim, feature_resolution=feature_resolution
    )
