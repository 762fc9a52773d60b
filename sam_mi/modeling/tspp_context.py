"""TSPP's attention over classes (Sec. 3.2, Fig. 3c "class-level contextual information"), in class chunks.

Both TSPP heads (tspp.py `TSPPHead`, tspp_heads.py `PaperTSPPHead`) embed every cost value into C channels, per
class and pixel: [B, T, h, w, C]. With an 847-class vocabulary that is 847 x 576 x 32 floats per tensor for a
24 x 24 map, and the unchunked forward keeps a dozen such tensors alive at once (embedding MLP, spatial block,
q/k/v of the class attention, FFN): it set the floor of the evaluation's peak memory once the aggregator
was chunked (tools/benchmark_memory.py). Everything in the heads is per class except the class attention,
which is *linear* attention: its keys and values enter only through two sums over the classes, so the classes
can be processed ``chunk`` at a time (a first pass accumulates the sums, a second attends to them) and the
result is the unchunked one up to the order of floating-point summation. Only the per-class input of the
class attention (one [B, h*w, T, C] tensor) and S_en are ever whole.
"""
from typing import Callable, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers.class_attention import even_chunks

__all__ = ["ClassLinearAttention", "class_slices", "class_context_in_chunks"]


class ClassLinearAttention(nn.Module):
    """Multi-head linear attention (elu + 1 feature map) over the token axis (classes, or pixels).

    Linear in T, so cheap for 847-class vocabularies, and normalised, so invariant to the class count.
    ``forward(x) == attend(x, *summarize(x))``; summaries of disjoint token chunks add up.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def _qkv(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """x [L, T, C] -> feature-mapped q, k and v, each [L, T, heads, C / heads]."""
        l, t, c = x.shape
        q, k, v = self.qkv(x).view(l, t, 3, self.num_heads, c // self.num_heads).unbind(dim=2)
        return F.elu(q) + 1.0, F.elu(k) + 1.0, v

    @staticmethod
    def _sums(k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        return torch.einsum("lthd,lthe->lhde", k, v), k.sum(dim=1)

    @staticmethod
    def _attend(q: Tensor, kv: Tensor, k_sum: Tensor) -> Tensor:
        norm = torch.einsum("lthd,lhd->lth", q, k_sum).clamp_min(1e-6)
        return torch.einsum("lthd,lhde->lthe", q, kv) / norm.unsqueeze(-1)

    def summarize(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """x [L, T, C] -> (sum_t k_t v_t^T [L, heads, d, d], sum_t k_t [L, heads, d])."""
        _, k, v = self._qkv(x)
        return self._sums(k, v)

    def attend(self, x: Tensor, kv: Tensor, k_sum: Tensor) -> Tensor:
        """The tokens of x [L, t, C] attending to the summaries of all tokens -> [L, t, C]."""
        l, t, c = x.shape
        q, _, _ = self._qkv(x)
        return self.proj(self._attend(q, kv, k_sum).reshape(l, t, c))

    def forward(self, x: Tensor) -> Tensor:
        """x: [L, T, C] (L = pixels) -> [L, T, C]."""
        l, t, c = x.shape
        q, k, v = self._qkv(x)
        return self.proj(self._attend(q, *self._sums(k, v)).reshape(l, t, c))


def class_slices(num_classes: int, chunk: int) -> List[slice]:
    """Chunks of at most ``chunk`` classes (nearly equal); ``chunk`` <= 0 or >= num_classes: one slice."""
    if chunk <= 0 or chunk >= num_classes:
        return [slice(0, num_classes)]
    return even_chunks(num_classes, chunk)


def class_context_in_chunks(
    cost: Tensor,
    chunk: int,
    per_class: Callable[[Tensor], Tensor],
    norm_class: nn.Module,
    class_attn: ClassLinearAttention,
    norm_ffn: nn.Module,
    ffn: nn.Module,
) -> Tuple[List[slice], List[Tensor]]:
    """S_en = FFN block(x + class_attn(norm_class(x))) with x = per_class(cost), ``chunk`` classes at a time.

    cost: [B, T, h, w]; per_class: cost of a class chunk [B, t, h, w] -> its per-class features [B, h*w, t, C]
    (everything the head does before attending over classes; it must treat every class on its own).
    Returns (the class slices, S_en of each slice [B, h*w, t_i, C]): pre-norm residual class attention, then
    the pre-norm residual FFN, exactly as the unchunked heads do.
    """
    slices = class_slices(cost.shape[1], chunk)
    if len(slices) == 1:  # one chunk: attend directly (the two passes would normalise and project it twice)
        x = per_class(cost)
        tokens = x.flatten(0, 1)
        tokens = tokens + class_attn(norm_class(tokens))
        return slices, [(tokens + ffn(norm_ffn(tokens))).view(x.shape)]
    feats: List = []
    kv = k_sum = None
    for s in slices:  # pass 1: per-class features and the attention's sums over all classes
        x = per_class(cost[:, s])
        part_kv, part_k = class_attn.summarize(norm_class(x.flatten(0, 1)))
        kv, k_sum = (part_kv, part_k) if kv is None else (kv + part_kv, k_sum + part_k)
        feats.append(x)
    s_en = []
    for i in range(len(feats)):  # pass 2: every chunk's classes attend to all classes
        x, feats[i] = feats[i], None  # (frees the chunk's input as soon as its output exists, at test time)
        tokens = x.flatten(0, 1)
        tokens = tokens + class_attn.attend(norm_class(tokens), kv, k_sum)
        tokens = tokens + ffn(norm_ffn(tokens))
        s_en.append(tokens.view(x.shape))
    return slices, s_en
