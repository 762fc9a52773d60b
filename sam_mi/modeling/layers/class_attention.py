"""Class aggregation of CAT-Seg: a transformer over the class axis of the cost embedding.

Follows CAT-Seg's ``ClassTransformerLayer`` (cvlab-kaist/CAT-Seg cat_seg/modeling/transformer/model.py) exactly:

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

Padding without padded work: the ``pad_len - T`` padding tokens are one learned vector (and one guidance vector)
repeated, and their outputs are dropped. So only the T class tokens are queried, normalised and sent through the
MLP, and the padding enters the attention as one key/value pair of multiplicity ``n_pad``: in linear attention
``sum_s phi(k_s) v_s`` gains ``n_pad * phi(k_p) v_p`` (and the normaliser ``n_pad * phi(k_p)``), in softmax
attention the padding key gets the additive logit ``log(n_pad)``. The result equals attention over the padded
sequence (up to float rounding), at a cost that grows with T instead of ``pad_len`` (256 in CAT-Seg: 12x less
class-attention work for the 20 VOC classes).

Memory: the text guidance is shared by all pooled pixels of an image, so its half of the q/k projection is computed
once per image and broadcast (``W [x; g] + b = W_x x + (W_g g + b)``) instead of repeating it B*h*w times.
Layout: channel-last ``[B, T, H, W, C]``.
"""
import math
from typing import List, Optional, Sequence, Tuple

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


def linear_attention_padded(
    queries: Tensor, keys: Tensor, values: Tensor, pad_key: Tensor, pad_value: Tensor, n_pad: int, eps: float = 1e-6
) -> Tensor:
    """:func:`linear_attention` over ``keys``/``values`` followed by ``n_pad`` copies of one padding pair.

    Args:
        queries: ``[N, L, H, D]``; keys: ``[N, S, H, D]``; values: ``[N, S, H, Dv]``;
        pad_key: ``[H, D]`` or ``[N, H, D]``; pad_value: ``[H, Dv]`` or ``[N, H, Dv]``; n_pad >= 0.
    Returns:
        ``[N, L, H, Dv]``, equal to ``linear_attention`` on the sequences padded to ``S + n_pad``.
    """
    q = F.elu(queries) + 1
    k = F.elu(keys) + 1
    s_len = values.size(1) + n_pad
    values = values / s_len
    k_pad = (F.elu(pad_key) + 1).expand(k.shape[0], *k.shape[2:])  # [N, H, D]
    v_pad = (pad_value / s_len).expand(values.shape[0], *values.shape[2:])  # [N, H, Dv]
    kv = torch.einsum("nshd,nshv->nhdv", k, values) + n_pad * torch.einsum("nhd,nhv->nhdv", k_pad, v_pad)
    z = 1.0 / (torch.einsum("nlhd,nhd->nlh", q, k.sum(dim=1) + n_pad * k_pad) + eps)
    return torch.einsum("nlhd,nhdv,nlh->nlhv", q, kv, z) * s_len


def full_attention_padded(
    queries: Tensor, keys: Tensor, values: Tensor, pad_key: Tensor, pad_value: Tensor, n_pad: int
) -> Tensor:
    """:func:`full_attention` over ``keys``/``values`` followed by ``n_pad`` copies of one padding pair: the
    padding is one extra key whose logit is raised by ``log(n_pad)`` (``n_pad`` equal terms of the softmax).

    Shapes as :func:`linear_attention_padded`.
    """
    if n_pad == 0:
        return full_attention(queries, keys, values)
    N, _, H, _ = keys.shape
    k = torch.cat([keys, pad_key.expand(N, H, -1)[:, None]], dim=1)
    v = torch.cat([values, pad_value.expand(N, H, -1)[:, None]], dim=1)
    bias = torch.zeros(k.shape[1], dtype=queries.dtype, device=queries.device)
    bias[-1] = math.log(n_pad)
    q = queries.transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2), attn_mask=bias.expand(q.shape[-2], -1))
    return out.transpose(1, 2)


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

    def forward(
        self, x: Tensor, guidance: Optional[Tensor], padding: Optional[Tuple[Tensor, Optional[Tensor], int]] = None
    ) -> Tensor:
        """
        Args:
            x: normalised tokens ``[B, M, L, C]`` (M sequences per image, L classes).
            guidance: ``[B, L, Cg]`` or None.
            padding: ``(token [C] (normalised), guidance [Cg] or None, n)``: the sequences continue with n copies
                of this token, which act as keys and values only (module docstring). None: no padding.
        Returns:
            ``[B, M, L, C]`` for the L given tokens.
        """
        B, M, L, C = x.shape
        h = self.nheads
        # q, k and v in one GEMM; the guidance half of q and k once per image, added in place over the M pixels
        weight = torch.cat([self.q.weight[:, :C], self.k.weight[:, :C], self.v.weight])
        qkv = F.linear(x, weight, torch.cat([self.q.bias, self.k.bias, self.v.bias]))  # [B, M, L, 3C]
        if self.guidance_dim > 0:
            if guidance is None:
                raise ValueError("this layer was built with a text guidance dim > 0: pass the text guidance")
            g = F.linear(guidance, torch.cat([self.q.weight[:, C:], self.k.weight[:, C:]]))  # [B, L, 2C]
            qkv[..., : 2 * C] += g.unsqueeze(1)
        q, k, v = qkv.reshape(B * M, L, 3, h, C // h).unbind(2)  # [B*M, L, h, d] views
        if padding is None or padding[2] == 0:
            return self.attention(q, k, v).reshape(B, M, L, C)
        token, pad_guidance, n_pad = padding
        g = pad_guidance[None, None] if pad_guidance is not None else None
        k_pad = self._guided_linear(self.k, token[None, None, None], g).reshape(h, C // h)
        v_pad = self.v(token).reshape(h, C // h)
        if isinstance(self.attention, LinearAttention):
            out = linear_attention_padded(q, k, v, k_pad, v_pad, n_pad, self.attention.eps)
        else:
            out = full_attention_padded(q, k, v, k_pad, v_pad, n_pad)
        return out.reshape(B, M, L, C)


def even_chunks(n: int, size: int) -> List[slice]:
    """Slices cutting range(n) into ceil(n / size) chunks of (nearly) equal length, none longer than ``size``."""
    count = -(-n // max(1, size))
    bounds = [n * i // count for i in range(count + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


class ClassTransformerLayer(nn.Module):
    """Pooled class-axis transformer with learned padding (CAT-Seg ``ClassTransformerLayer``).

    Args:
        hidden_dim: C. guidance_dim: text guidance channels Cg. nheads: heads. attention_type: "linear" | "full".
        pooling_size: (ph, pw) average pooling before attention (None or (1, 1) = none); may be reassigned
            after construction. pad_len: sequences are padded with learned tokens to this length (0 disables).
        chunk_tokens: > 0 runs attention and MLP on chunks of about this many tokens (whole pooled-pixel
            sequences); same result, smaller working set. May be reassigned after construction.
    """

    def __init__(
        self,
        hidden_dim: int = 64,
        guidance_dim: int = 64,
        nheads: int = 8,
        attention_type: str = "linear",
        pooling_size: Optional[Sequence[int]] = (4, 4),
        pad_len: int = 256,
        chunk_tokens: int = 0,
    ) -> None:
        super().__init__()
        self.chunk_tokens = int(chunk_tokens)
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
        padding = None
        if self.padding_tokens is not None and T < self.pad_len:
            # padded tokens only act as keys/values (module docstring): no padded sequence is built
            token = self.norm1(self.padding_tokens.reshape(C).to(x_pool.dtype))
            pad_guidance = None
            if guidance is not None and self.padding_guidance is not None:
                pad_guidance = self.padding_guidance.reshape(-1).to(guidance.dtype)
            padding = (token, pad_guidance, self.pad_len - T)
        seq = x_pool.permute(0, 2, 3, 1, 4).reshape(B, Hp * Wp, T, C)  # one class sequence per pooled pixel
        parts = []
        for chunk in even_chunks(Hp * Wp, max(1, self.chunk_tokens // T) if self.chunk_tokens > 0 else Hp * Wp):
            s = seq[:, chunk]  # sequences are independent: pixel chunks keep the working set in cache
            s = s + self.attention(self.norm1(s), guidance, padding)
            parts.append(s + self.MLP(self.norm2(s)))
        seq = (torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]).reshape(B, Hp, Wp, T, C)
        if (Hp, Wp) != (H, W):
            # channels-last interpolation: one copy to bring the classes in front, no layout change after
            up = seq.permute(0, 3, 1, 2, 4).reshape(B * T, Hp, Wp, C).permute(0, 3, 1, 2)
            up = F.interpolate(up, size=(H, W), mode="bilinear", align_corners=True)
            up = up.permute(0, 2, 3, 1).reshape(B, T, H, W, C)
        else:
            # same-size align_corners=True interpolation is the identity
            up = seq.permute(0, 3, 1, 2, 4)
        return x + up
