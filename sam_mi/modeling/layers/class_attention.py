"""Class aggregation of CAT-Seg: a transformer over the class axis of the cost embedding.

Follows CAT-Seg v2 exactly (/work/shared/research/catseg.md §2.3 step 5, "Class"):

- the cost embedding of every class is average-pooled by ``pooling_size`` (2x2 in training, 1x1 in the evaluation
  protocol) to cut the number of sequences; ``pooling_size`` is a plain attribute read in ``forward`` so the
  evaluation protocol can change it on a trained model;
- per pooled pixel, the T class tokens form one sequence; if ``T < pad_len``, learned ``padding_tokens`` and
  ``padding_guidance`` are appended so every sequence has ``pad_len`` tokens;
- pre-norm attention: ``q, k = Linear(C + Cg -> C)`` on ``concat[norm1(x), text guidance]``, ``v = Linear(C -> C)``
  on ``norm1(x)``; **no output projection**; linear attention (elu + 1 feature map, eps 1e-6, values divided by
  the sequence length and the result multiplied back, CAT-Seg's fp16 guard) or full softmax attention;
- MLP ``C -> 4C -> C`` with ReLU (``MLP.0``/``MLP.2``), pre-norm ``norm2``, residuals;
- the result goes back to the full grid by bilinear interpolation (``align_corners=True``), the padding is dropped,
  and **the input is added once more**: ``out = x + up(pooled branch)``. As the pooled branch already holds its own
  residual, with pooling 1x1 the layer returns ``2x + delta``. This is CAT-Seg's behaviour and its checkpoints are
  trained with it, so it is kept.

Memory: the text guidance is shared by all pooled pixels of an image, so its half of the q/k projection is computed
once per image and broadcast (``W [x; g] + b = W_x x + (W_g g + b)``) instead of repeating it B*h*w times.
Layout: channel-last ``[B, T, H, W, C]``.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def linear_attention(queries: Tensor, keys: Tensor, values: Tensor, eps: float = 1e-6) -> Tensor:
    """Multi-head linear attention of "Transformers are RNNs" as written in CAT-Seg.

    ``out_l = phi(q_l)^T sum_s phi(k_s) (v_s / S) / (phi(q_l)^T sum_s phi(k_s) + eps) * S`` with
    ``phi(x) = elu(x) + 1``. (Dividing then multiplying by S is not an identity because of eps; kept for
    checkpoint equivalence.)

    Args:
        queries: ``[N, L, H, D]``; keys: ``[N, S, H, D]``; values: ``[N, S, H, Dv]``.
    Returns:
        ``[N, L, H, Dv]``.
    """
    q = F.elu(queries) + 1
    k = F.elu(keys) + 1
    s_len = values.size(1)
    values = values / s_len
    kv = torch.einsum("nshd,nshv->nhdv", k, values)
    z = 1.0 / (torch.einsum("nlhd,nhd->nlh", q, k.sum(dim=1)) + eps)
    return torch.einsum("nlhd,nhdv,nlh->nlhv", q, kv, z) * s_len


def full_attention(queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """Softmax attention with temperature ``D^-0.5`` (CAT-Seg ``FullAttention``, no dropout).

    Args:
        queries: ``[N, L, H, D]``; keys: ``[N, S, H, D]``; values: ``[N, S, H, Dv]``.
    Returns:
        ``[N, L, H, Dv]``.
    """
    out = F.scaled_dot_product_attention(queries.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2))
    return out.transpose(1, 2)


class LinearAttention(nn.Module):
    """Parameter-free module wrapper of :func:`linear_attention`."""

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        return linear_attention(queries, keys, values, self.eps)


class FullAttention(nn.Module):
    """Parameter-free module wrapper of :func:`full_attention`."""

    def forward(self, queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        return full_attention(queries, keys, values)


class AttentionLayer(nn.Module):
    """Guided multi-head attention over classes without output projection (CAT-Seg ``AttentionLayer``)."""

    def __init__(self, hidden_dim: int, guidance_dim: int, nheads: int = 8, attention_type: str = "linear") -> None:
        super().__init__()
        if hidden_dim % nheads != 0:
            raise ValueError(f"hidden dim {hidden_dim} must be divisible by the number of heads {nheads}")
        self.hidden_dim = hidden_dim
        self.guidance_dim = guidance_dim
        self.nheads = nheads
        self.q = nn.Linear(hidden_dim + guidance_dim, hidden_dim)
        self.k = nn.Linear(hidden_dim + guidance_dim, hidden_dim)
        self.v = nn.Linear(hidden_dim, hidden_dim)
        if attention_type == "linear":
            self.attention: nn.Module = LinearAttention()
        elif attention_type == "full":
            self.attention = FullAttention()
        else:
            raise ValueError(f"attention_type must be 'linear' or 'full', got {attention_type!r}")

    def _guided_linear(self, layer: nn.Linear, x: Tensor, guidance: Optional[Tensor]) -> Tensor:
        """``layer(concat[x, g])`` for x ``[B, M, L, C]`` and g ``[B, L, Cg]`` shared by the M pooled pixels."""
        out = F.linear(x, layer.weight[:, : self.hidden_dim], layer.bias)
        if self.guidance_dim > 0:
            if guidance is None:
                raise ValueError("this layer was built with a text guidance dim > 0: pass the text guidance")
            out = out + F.linear(guidance, layer.weight[:, self.hidden_dim :]).unsqueeze(1)
        return out

    def forward(self, x: Tensor, guidance: Optional[Tensor]) -> Tensor:
        """
        Args:
            x: normalised tokens ``[B, M, L, C]`` (M sequences per image, L classes incl. padding).
            guidance: ``[B, L, Cg]`` or None.
        Returns:
            ``[B, M, L, C]``.
        """
        B, M, L, C = x.shape
        h = self.nheads
        q = self._guided_linear(self.q, x, guidance).reshape(B * M, L, h, C // h)
        k = self._guided_linear(self.k, x, guidance).reshape(B * M, L, h, C // h)
        v = self.v(x).reshape(B * M, L, h, C // h)
        return self.attention(q, k, v).reshape(B, M, L, C)


class ClassTransformerLayer(nn.Module):
    """Pooled class-axis transformer with learned padding (CAT-Seg ``ClassTransformerLayer``).

    Args:
        hidden_dim: C. guidance_dim: text guidance channels Cg. nheads: heads. attention_type: "linear" | "full".
        pooling_size: (ph, pw) average pooling before attention (None or (1, 1) = none); may be reassigned
            after construction. pad_len: sequences are padded with learned tokens to this length (0 disables).
    """

    def __init__(
        self,
        hidden_dim: int = 64,
        guidance_dim: int = 64,
        nheads: int = 8,
        attention_type: str = "linear",
        pooling_size: Optional[Sequence[int]] = (4, 4),
        pad_len: int = 256,
    ) -> None:
        super().__init__()
        self.pooling_size: Optional[Tuple[int, int]] = tuple(pooling_size) if pooling_size is not None else None
        self.attention = AttentionLayer(hidden_dim, guidance_dim, nheads=nheads, attention_type=attention_type)
        self.MLP = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim * 4), nn.ReLU(), nn.Linear(hidden_dim * 4, hidden_dim)
        )
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.pad_len = pad_len
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, hidden_dim)) if pad_len > 0 else None
        self.padding_guidance = (
            nn.Parameter(torch.zeros(1, 1, guidance_dim)) if pad_len > 0 and guidance_dim > 0 else None
        )

    def pool_features(self, x: Tensor) -> Tensor:
        """Average-pool each class slice: ``[B, T, H, W, C]`` -> ``[B, T, H', W', C]`` (AvgPool2d semantics)."""
        if self.pooling_size is None or tuple(self.pooling_size) == (1, 1):
            return x
        B, T, H, W, C = x.shape
        pooled = F.avg_pool2d(x.reshape(B * T, H, W, C).permute(0, 3, 1, 2), tuple(self.pooling_size))
        return pooled.permute(0, 2, 3, 1).reshape(B, T, pooled.shape[-2], pooled.shape[-1], C)

    def forward(self, x: Tensor, guidance: Optional[Tensor]) -> Tensor:
        """
        Args:
            x: cost embedding ``[B, T, H, W, C]``. guidance: projected text guidance ``[B, T, Cg]`` or None.
        Returns:
            ``x + upsample(pooled branch)``, ``[B, T, H, W, C]``.
        """
        B, T, H, W, C = x.shape
        x_pool = self.pool_features(x)
        Hp, Wp = x_pool.shape[2:4]
        if self.padding_tokens is not None and T < self.pad_len:
            n_pad = self.pad_len - T
            pad = self.padding_tokens.to(x_pool.dtype).reshape(1, 1, 1, 1, C).expand(B, n_pad, Hp, Wp, C)
            x_pool = torch.cat([x_pool, pad], dim=1)
            if guidance is not None and self.padding_guidance is not None:
                g_pad = self.padding_guidance.to(guidance.dtype).expand(B, n_pad, -1)
                guidance = torch.cat([guidance, g_pad], dim=1)
        L = x_pool.shape[1]
        seq = x_pool.permute(0, 2, 3, 1, 4).reshape(B, Hp * Wp, L, C)  # one class sequence per pooled pixel
        seq = seq + self.attention(self.norm1(seq), guidance)
        seq = seq + self.MLP(self.norm2(seq))
        # drop the padding before upsampling (interpolation is per class, so this equals CAT-Seg's order)
        seq = seq[:, :, :T].reshape(B, Hp, Wp, T, C)
        if (Hp, Wp) != (H, W):
            up = seq.permute(0, 3, 4, 1, 2).reshape(B * T, C, Hp, Wp)
            up = F.interpolate(up, size=(H, W), mode="bilinear", align_corners=True)
            up = up.reshape(B, T, C, H, W).permute(0, 1, 3, 4, 2)
        else:
            # same-size align_corners=True interpolation is the identity
            up = seq.permute(0, 3, 1, 2, 4)
        return x + up
