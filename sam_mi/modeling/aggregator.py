"""CAT-Seg cost aggregation head (``Aggregator``), checkpoint-compatible with CAT-Seg v2.

SAM-MI (Sec. 3.1) builds on CAT-Seg: a CLIP cosine cost volume between dense image features and class text
embeddings is embedded, aggregated spatially (guided Swin blocks) and across classes (guided linear-attention
transformer), and decoded to per-class logits at 4x the CLIP grid. This module reimplements CAT-Seg's
``Aggregator`` (cvlab-kaist/CAT-Seg cat_seg/modeling/transformer/model.py; Cho et al., "CAT-Seg: Cost Aggregation
for Open-Vocabulary Semantic Segmentation", CVPR 2024, Sec. 3) with its parameter names and shapes, so a CAT-Seg
checkpoint's ``sem_seg_head.predictor.transformer.*`` keys load into ``aggregator.*``.

SAM-MI differences are interface-only: the appearance guidance is a separate argument (SAM-MI passes DMI's
F_mcr, Eq. 11, where CAT-Seg passes the CLIP dense features themselves) and the decoder guidance maps are passed
in already as DMI's high-frequency outputs (Eq. 13), before this module's projections.

Choices that reproduce CAT-Seg on purpose (see the docstrings of the parts for the rest):
- raw cosine cost, no temperature; ``text_feats`` of shape [B, T, P, D] with P prompt templates as channels.
- ``T > pad_len``: each image keeps its ``pad_len`` classes with the highest max-over-(P, h, w) cosine
  (``topk``, unsorted); the others get logit ``-100`` (sigmoid ~ 0). ``pad_len = 0`` disables padding and top-k.
- the text guidance is the template mean, re-normalised; in the top-k branch it is built from the
  per-template-normalised gathered features, otherwise from the raw input (CAT-Seg's two branches; identical
  when the input is already normalised or P = 1).
- decoder guidance order: ``decoder_guidance[0]`` at 2h x 2w (CAT-Seg's shallower CLIP layer),
  ``decoder_guidance[1]`` at 4h x 4w.

Speed (same outputs to float rounding; tests/test_aggregator.py and tools/benchmark_aggregator.py compare):
class attention never computes the padding tokens (layers/class_attention.py), the Swin blocks use one QKV GEMM,
one gather per window shift and fused attention (layers/swin_blocks.py), and the decoder runs channels-last.
``class_chunk`` (default 16) runs the per-class parts (Swin blocks, decoder) on that many classes at a time and the
class attention on as many tokens at a time, which bounds their working set and activation memory for large
vocabularies without changing the result.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function

from .layers.class_attention import ClassTransformerLayer, even_chunks
from .layers.swin_blocks import SwinTransformerBlockWrapper
from .layers.upsample_decoder import Up

__all__ = ["Aggregator", "AggregatorLayer", "cost_volume", "select_top_classes"]


def cost_volume(img_feats: Tensor, text_feats: Tensor) -> Tensor:
    """Cosine cost volume (SAM-MI Eq. 1 / CAT-Seg correlation).

    Args:
        img_feats: ``[B, D, h, w]``; text_feats: ``[B, T, P, D]`` (both normalised here along D).
    Returns:
        ``[B, T, P, h, w]`` cosine similarities.
    """
    return torch.einsum("bdhw,btpd->btphw", F.normalize(img_feats, dim=1), F.normalize(text_feats, dim=-1))


def select_top_classes(corr: Tensor, k: int) -> Tensor:
    """Indices of the k classes per image with the highest max cosine over (P, h, w) (CAT-Seg large vocabularies).

    Args:
        corr: ``[B, T, P, h, w]``. k: classes kept (<= T).
    Returns:
        LongTensor ``[B, k]`` (unsorted, as CAT-Seg's ``topk(sorted=False)``).
    """
    score = corr.flatten(2).amax(dim=-1)  # [B, T]
    return score.topk(k, dim=-1, sorted=False).indices


class AggregatorLayer(nn.Module):
    """Spatial (guided Swin pair) then class (guided class transformer) aggregation; CAT-Seg names."""

    def __init__(
        self,
        hidden_dim: int = 64,
        text_guidance_dim: int = 512,
        appearance_guidance: int = 512,
        nheads: int = 4,
        input_resolution: Tuple[int, int] = (20, 20),
        pooling_size: Optional[Sequence[int]] = (5, 5),
        window_size: int = 10,
        attention_type: str = "linear",
        pad_len: int = 256,
    ) -> None:
        super().__init__()
        self.swin_block = SwinTransformerBlockWrapper(
            hidden_dim, appearance_guidance, tuple(input_resolution), nheads, window_size
        )
        self.attention = ClassTransformerLayer(
            hidden_dim, text_guidance_dim, nheads, attention_type, pooling_size=pooling_size, pad_len=pad_len
        )

    def forward(self, x: Tensor, appearance_guidance: Optional[Tensor], text_guidance: Optional[Tensor]) -> Tensor:
        """x ``[B, T, h, w, C]``, appearance_guidance ``[B, Ca, h, w]``, text_guidance ``[B, T, Ct]`` -> x's shape."""
        x = self.swin_block(x, appearance_guidance)
        return self.attention(x, text_guidance)


class Aggregator(nn.Module):
    """CAT-Seg cost aggregation: cost volume -> embedding -> N x (spatial, class) aggregation -> decoder.

    Args (CAT-Seg's, same defaults except ``num_layers=2``/``pooling_size=(2, 2)`` as in its shipped configs):
        text_guidance_dim / text_guidance_proj_dim: CLIP text dim D and its projection.
        appearance_guidance_dim / appearance_guidance_proj_dim: appearance guidance channels and projection.
        decoder_dims: output channels of the two upsampling stages.
        decoder_guidance_dims / decoder_guidance_proj_dims: channels of the two decoder guidance maps and their
            projections.
        num_layers, nheads, hidden_dim: aggregation depth, heads, width.
        pooling_size: class-aggregation pooling; reassign via ``pooling_size`` / :meth:`set_pooling_size`
            (the evaluation protocol uses (1, 1) on a model trained with (2, 2)).
        feature_resolution: the (h, w) CLIP grid; window_size: Swin window (must divide h and w).
        attention_type: "linear" or "full" class attention. prompt_channel: P templates.
        pad_len: class-aggregation sequence length (padding / top-k), 0 disables.
        class_chunk: classes per chunk in the per-class parts, and as many tokens per chunk in the class
            attention (0 = all at once). Same result; a working set that fits the caches (2x faster on a CPU for
            171 classes than one batch, tools/benchmark_aggregator.py) and activation memory bounded in T.
    """

    def __init__(
        self,
        text_guidance_dim: int = 512,
        text_guidance_proj_dim: int = 128,
        appearance_guidance_dim: int = 512,
        appearance_guidance_proj_dim: int = 128,
        decoder_dims: Sequence[int] = (64, 32),
        decoder_guidance_dims: Sequence[int] = (256, 128),
        decoder_guidance_proj_dims: Sequence[int] = (32, 16),
        num_layers: int = 2,
        nheads: int = 4,
        hidden_dim: int = 128,
        pooling_size: Optional[Sequence[int]] = (2, 2),
        feature_resolution: Sequence[int] = (24, 24),
        window_size: int = 12,
        attention_type: str = "linear",
        prompt_channel: int = 1,
        pad_len: int = 256,
        class_chunk: int = 16,
    ) -> None:
        super().__init__()
        if len(decoder_dims) != 2 or len(decoder_guidance_dims) != 2 or len(decoder_guidance_proj_dims) != 2:
            raise ValueError("decoder_dims, decoder_guidance_dims and decoder_guidance_proj_dims need 2 entries each")
        self.num_layers = num_layers
        self.hidden_dim = hidden_dim
        self.text_guidance_dim = text_guidance_dim
        self.appearance_guidance_dim = appearance_guidance_dim
        self.decoder_guidance_dims = tuple(decoder_guidance_dims)
        self.feature_resolution = (int(feature_resolution[0]), int(feature_resolution[1]))
        self.prompt_channel = prompt_channel
        self.pad_len = pad_len

        self.layers = nn.ModuleList(
            [
                AggregatorLayer(
                    hidden_dim=hidden_dim,
                    text_guidance_dim=text_guidance_proj_dim,
                    appearance_guidance=appearance_guidance_proj_dim,
                    nheads=nheads,
                    input_resolution=self.feature_resolution,
                    pooling_size=pooling_size,
                    window_size=window_size,
                    attention_type=attention_type,
                    pad_len=pad_len,
                )
                for _ in range(num_layers)
            ]
        )
        self.conv1 = nn.Conv2d(prompt_channel, hidden_dim, kernel_size=7, stride=1, padding=3)
        self.guidance_projection = nn.Sequential(
            nn.Conv2d(appearance_guidance_dim, appearance_guidance_proj_dim, kernel_size=3, stride=1, padding=1),
            nn.ReLU(),
        )
        self.text_guidance_projection = nn.Sequential(nn.Linear(text_guidance_dim, text_guidance_proj_dim), nn.ReLU())
        self.decoder_guidance_projection = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(d, dp, kernel_size=3, stride=1, padding=1), nn.ReLU())
                for d, dp in zip(decoder_guidance_dims, decoder_guidance_proj_dims)
            ]
        )
        self.decoder1 = Up(hidden_dim, decoder_dims[0], decoder_guidance_proj_dims[0])
        self.decoder2 = Up(decoder_dims[0], decoder_dims[1], decoder_guidance_proj_dims[1])
        self.head = nn.Conv2d(decoder_dims[1], 1, kernel_size=3, stride=1, padding=1)
        self._pooling_size = tuple(pooling_size) if pooling_size is not None else None
        self.class_chunk = class_chunk

    # -- pooling is an evaluation-protocol switch, not a weight ------------------------------------------------
    @property
    def pooling_size(self) -> Optional[Tuple[int, int]]:
        return self._pooling_size

    @pooling_size.setter
    def pooling_size(self, size: Optional[Sequence[int]]) -> None:
        self.set_pooling_size(size)

    def set_pooling_size(self, size: Optional[Sequence[int]]) -> None:
        """Set the class-aggregation pooling of every layer, e.g. ``(1, 1)`` for CAT-Seg's evaluation protocol."""
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ValueError(f"pooling size must be two positive ints (or None), got {size}")
        self._pooling_size = tuple(int(s) for s in size) if size is not None else None
        for layer in self.layers:
            layer.attention.pooling_size = self._pooling_size

    # -- forward ----------------------------------------------------------------------------------------------
    def _check_inputs(
        self, img_feats: Tensor, text_feats: Tensor, appearance_guidance: Tensor, decoder_guidance: Sequence[Tensor]
    ) -> None:
        if img_feats.dim() != 4 or text_feats.dim() != 4:
            raise ValueError(
                f"expected img_feats [B,D,h,w] and text_feats [B,T,P,D], got {tuple(img_feats.shape)} and "
                f"{tuple(text_feats.shape)}"
            )
        B, D, h, w = img_feats.shape
        if text_feats.shape[0] != B or text_feats.shape[-1] != D:
            raise ValueError(f"text_feats {tuple(text_feats.shape)} does not match img_feats {tuple(img_feats.shape)}")
        if text_feats.shape[2] != self.prompt_channel:
            raise ValueError(
                f"text_feats has P={text_feats.shape[2]} templates but the aggregator was built with "
                f"prompt_channel={self.prompt_channel}"
            )
        if D != self.text_guidance_dim:
            raise ValueError(f"text/image dim {D} != text_guidance_dim {self.text_guidance_dim}")
        if (h, w) != self.feature_resolution:
            raise ValueError(
                f"feature grid {(h, w)} != feature_resolution {self.feature_resolution}: resize the CLIP input "
                "or build the aggregator for this grid"
            )
        if tuple(appearance_guidance.shape) != (B, self.appearance_guidance_dim, h, w):
            raise ValueError(
                f"appearance_guidance must be {(B, self.appearance_guidance_dim, h, w)}, "
                f"got {tuple(appearance_guidance.shape)}"
            )
        if len(decoder_guidance) != 2:
            raise ValueError(f"decoder_guidance must hold 2 maps (at 2h and 4h), got {len(decoder_guidance)}")
        for i, (g, c) in enumerate(zip(decoder_guidance, self.decoder_guidance_dims)):
            want = (B, c, h * 2 ** (i + 1), w * 2 ** (i + 1))
            if tuple(g.shape) != want:
                raise ValueError(f"decoder_guidance[{i}] must be {want}, got {tuple(g.shape)}")

    @property
    def class_chunk(self) -> int:
        return self._class_chunk

    @class_chunk.setter
    def class_chunk(self, chunk: int) -> None:
        """Classes per chunk in the per-class parts; the class attention gets the same number of tokens per chunk
        (``class_chunk * h * w``, whole sequences). 0 = no chunking. Same result either way."""
        if chunk < 0:
            raise ValueError(f"class_chunk must be >= 0 (0 = all classes at once), got {chunk}")
        self._class_chunk = int(chunk)
        for layer in self.layers:
            layer.attention.chunk_tokens = self._class_chunk * self.feature_resolution[0] * self.feature_resolution[1]

    def _per_class(self, fn, x: Tensor) -> Tensor:
        """``fn`` on (nearly equal) chunks of at most ``class_chunk`` classes of ``x`` [B, T, ...], concatenated."""
        T = x.shape[1]
        if self.class_chunk <= 0 or T <= self.class_chunk:
            return fn(x)
        return torch.cat([fn(x[:, c]) for c in even_chunks(T, self.class_chunk)], dim=1)

    def _decode(self, x: Tensor, dec_guid: List[Tensor]) -> Tensor:
        """Aggregated cost [B, T, h, w, C] -> logits [B, T, 4h, 4w] (upsampling decoder and head)."""
        B, T, h, w, C = x.shape
        x = x.reshape(B * T, h, w, C).permute(0, 3, 1, 2)  # NCHW view of the channels-last tokens
        x = self.decoder1(x, dec_guid[0])  # 2h x 2w
        x = self.decoder2(x, dec_guid[1])  # 4h x 4w
        return self.head(x).reshape(B, T, 4 * h, 4 * w)  # one channel: both layouts are the same

    def forward(
        self,
        img_feats: Tensor,
        text_feats: Tensor,
        appearance_guidance: Tensor,
        decoder_guidance: List[Tensor],
    ) -> Tensor:
        """
        Args:
            img_feats: dense CLIP image features ``[B, D, h, w]``.
            text_feats: class text embeddings ``[B, T, P, D]``.
            appearance_guidance: ``[B, Ca, h, w]`` (CAT-Seg: = img_feats; SAM-MI: F_mcr, Eq. 11).
            decoder_guidance: ``[B, Cg0, 2h, 2w]`` and ``[B, Cg1, 4h, 4w]`` (SAM-MI: DMI high outputs, Eq. 13).
        Returns:
            logits ``[B, T, 4h, 4w]``; classes dropped by the top-``pad_len`` rule are ``-100``.
        """
        self._check_inputs(img_feats, text_feats, appearance_guidance, decoder_guidance)
        B, T = text_feats.shape[:2]
        h, w = self.feature_resolution

        # profiler spans named like the model's stages (tools/benchmark_memory.py); plain record_function keeps
        # this module free of package imports (tools/benchmark_aggregator.py loads it from git alone)
        with record_function("sam_mi/cost_volume"):
            corr = cost_volume(img_feats, text_feats)  # [B, T, P, h, w], Eq. 1
            classes = None
            if self.pad_len > 0 and T > self.pad_len:
                classes = select_top_classes(corr, self.pad_len)  # [B, K]
                corr = torch.gather(corr, 1, classes[:, :, None, None, None].expand(-1, -1, *corr.shape[2:]))
                text_n = F.normalize(text_feats, dim=-1)
                text_feats = torch.gather(text_n, 1, classes[:, :, None, None].expand(-1, -1, *text_n.shape[2:]))
            Tk = corr.shape[1]

            # cost embedding: conv over (P templates as channels) per class -> [B, Tk, h, w, C]
            x = self.conv1(corr.reshape(B * Tk, self.prompt_channel, h, w))
            x = x.reshape(B, Tk, self.hidden_dim, h, w).permute(0, 1, 3, 4, 2)
            del corr

        app_guid = self.guidance_projection(appearance_guidance)  # [B, Ca', h, w]
        # channels-last convolutions in the decoder (oneDNN's fast layout; the tokens already are channels-last)
        dec_guid = [
            proj(g.contiguous(memory_format=torch.channels_last))
            for proj, g in zip(self.decoder_guidance_projection, decoder_guidance)
        ]
        text_guid = F.normalize(text_feats.mean(dim=2), dim=-1)
        text_guid = self.text_guidance_projection(text_guid)  # [B, Tk, Ct']

        with record_function("sam_mi/aggregation"):
            for layer in self.layers:
                x = self._per_class(lambda t: layer.swin_block(t, app_guid), x)
                x = layer.attention(x, text_guid)
        with record_function("sam_mi/decoder"):
            logits = self._per_class(lambda t: self._decode(t, dec_guid), x)
            if classes is not None:
                out = logits.new_full((B, T, 4 * h, 4 * w), -100.0)
                logits = out.scatter(1, classes[:, :, None, None].expand(-1, -1, 4 * h, 4 * w), logits)
        return logits
