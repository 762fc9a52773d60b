"""Multi-head attention with separate Q/K/V projection Parameters (CAT-Seg ``model_vpt`` layout).

Why: SAM-MI (Sec. 3.1), like CAT-Seg v2, fine-tunes only the query and value projections of both CLIP
encoders.  ``nn.MultiheadAttention`` stores them fused in one ``in_proj_weight`` (3D, D); masking the K
rows' gradient is not enough because AdamW's decoupled weight decay would still shrink them.  With three
separate Parameters the K projection can simply have ``requires_grad=False`` and no optimizer ever sees it.

State-dict keys equal CAT-Seg's: ``attn.q_proj_weight``, ``attn.k_proj_weight``, ``attn.v_proj_weight``
(each (D, D)), ``attn.in_proj_bias`` (3D,) and ``attn.out_proj.{weight,bias}``.  A fused
``attn.in_proj_weight`` found while loading (OpenAI / open_clip checkpoints) is split with ``chunk(3)``.
"""
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SplitQKVAttention", "split_attention_", "split_in_proj_weights"]


def split_in_proj_weights(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Return a copy of ``state_dict`` with every ``*.in_proj_weight`` (3D, D) split into
    ``*.q_proj_weight``, ``*.k_proj_weight``, ``*.v_proj_weight`` (D, D) along dim 0 (= MHA's packing)."""
    out: Dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("in_proj_weight"):
            base = key[: -len("in_proj_weight")]
            q, k, v = value.chunk(3, dim=0)
            out[base + "q_proj_weight"], out[base + "k_proj_weight"], out[base + "v_proj_weight"] = q, k, v
        else:
            out[key] = value
    return out


class SplitQKVAttention(nn.Module):
    """Drop-in replacement for the ``nn.MultiheadAttention`` inside open_clip's ``ResidualAttentionBlock``.

    Accepts the call ``attn(q_x, k_x, v_x, need_weights=False, attn_mask=mask)`` and returns
    ``(output, None)`` like MHA.  Shapes follow ``batch_first``: [B, L, D] if True else [L, B, D].
    ``attn_mask`` is MHA's: float (additive) or bool (True = masked), [L, S] or [B*heads, L, S].

    Args:
        embed_dim: D.
        num_heads: number of heads (D must be divisible by it).
        batch_first: layout of the inputs, copied from the MHA being replaced.
    """

    def __init__(self, embed_dim: int, num_heads: int, batch_first: bool = True) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.batch_first = batch_first
        self.q_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim))
        self.k_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim))
        self.v_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        for w in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
            nn.init.xavier_uniform_(w)
        nn.init.zeros_(self.out_proj.bias)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> "SplitQKVAttention":
        """Build from an ``nn.MultiheadAttention``, copying its weights (fused weight split by chunk(3))."""
        if not mha._qkv_same_embed_dim or mha.in_proj_bias is None:
            raise ValueError("only self-attention MHA with a fused in_proj_weight and bias can be split")
        if mha.bias_k is not None or mha.add_zero_attn or mha.dropout != 0.0:
            raise ValueError("MHA with bias_k/bias_v, add_zero_attn or dropout is not supported")
        new = cls(mha.embed_dim, mha.num_heads, batch_first=mha.batch_first)
        new = new.to(device=mha.in_proj_weight.device, dtype=mha.in_proj_weight.dtype)
        with torch.no_grad():
            q, k, v = mha.in_proj_weight.chunk(3, dim=0)
            new.q_proj_weight.copy_(q)
            new.k_proj_weight.copy_(k)
            new.v_proj_weight.copy_(v)
            new.in_proj_bias.copy_(mha.in_proj_bias)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            new.out_proj.bias.copy_(mha.out_proj.bias)
        return new

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Accept fused OpenAI / open_clip weights transparently (same split as split_in_proj_weights).
        fused = state_dict.pop(prefix + "in_proj_weight", None)
        if fused is not None:
            q, k, v = fused.chunk(3, dim=0)
            state_dict[prefix + "q_proj_weight"] = q
            state_dict[prefix + "k_proj_weight"] = k
            state_dict[prefix + "v_proj_weight"] = v
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _project(self, x: Tensor, which: int) -> Tensor:
        """x [..., D] -> one of the q (0), k (1), v (2) projections [..., D] (with its bias slice)."""
        weight = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)[which]
        bias = self.in_proj_bias[which * self.embed_dim:(which + 1) * self.embed_dim]
        return F.linear(x, weight, bias)

    def value_output(self, x: Tensor) -> Tensor:
        """out_proj(v_proj(x)) for every token, [..., D] -> [..., D].

        CAT-Seg's dense last layer (cvlab-kaist/CAT-Seg cat_seg/third_party/model_vpt.py) keeps only this "value path": no attention mixing,
        so each patch token stays local (better localisation for the cost volume)."""
        return self.out_proj(self._project(x, 2))

    def forward(
        self,
        query: Tensor,
        key: Optional[Tensor] = None,
        value: Optional[Tensor] = None,
        need_weights: bool = False,
        attn_mask: Optional[Tensor] = None,
        key_padding_mask: Optional[Tensor] = None,
    ) -> Tuple[Tensor, None]:
        if need_weights:
            raise ValueError("SplitQKVAttention does not return attention weights; call with need_weights=False")
        key = query if key is None else key
        value = key if value is None else value
        if not self.batch_first:  # [L, B, D] -> [B, L, D]
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        batch, q_len, _ = query.shape
        k_len = key.shape[1]

        def heads(x: Tensor, length: int) -> Tensor:  # [B, L, D] -> [B, H, L, hd]
            return x.reshape(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

        q = heads(self._project(query, 0), q_len)
        k = heads(self._project(key, 1), k_len)
        v = heads(self._project(value, 2), k_len)
        mask = self._merge_masks(attn_mask, key_padding_mask, batch, q_len, k_len, q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, L, hd]
        out = self.out_proj(out.transpose(1, 2).reshape(batch, q_len, self.embed_dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, None

    def _merge_masks(
        self,
        attn_mask: Optional[Tensor],
        key_padding_mask: Optional[Tensor],
        batch: int,
        q_len: int,
        k_len: int,
        dtype: torch.dtype,
    ) -> Optional[Tensor]:
        """MHA masks -> one additive float mask broadcastable to [B, H, L, S] (None if no mask)."""
        masks: List[Tensor] = []
        if attn_mask is not None:
            m = attn_mask
            if m.dtype == torch.bool:  # MHA: True = not allowed
                m = torch.zeros_like(m, dtype=dtype).masked_fill(m, float("-inf"))
            m = m.to(dtype)
            if m.dim() == 3:  # [B*H, L, S]
                m = m.reshape(batch, self.num_heads, q_len, k_len)
            elif m.dim() != 2:
                raise ValueError(f"attn_mask must be 2-D or 3-D, got shape {tuple(attn_mask.shape)}")
            masks.append(m)
        if key_padding_mask is not None:  # [B, S], True (or -inf) = ignore that key
            kpm = key_padding_mask
            if kpm.dtype == torch.bool:
                kpm = torch.zeros_like(kpm, dtype=dtype).masked_fill(kpm, float("-inf"))
            masks.append(kpm.to(dtype).reshape(batch, 1, 1, k_len))
        if not masks:
            return None
        return masks[0] if len(masks) == 1 else masks[0] + masks[1]


def split_attention_(module: nn.Module) -> int:
    """Replace, in place, every ``nn.MultiheadAttention`` below ``module`` by a ``SplitQKVAttention``
    holding the same weights.  Returns the number of replaced modules."""
    targets = [(name, m) for name, m in module.named_modules() if isinstance(m, nn.MultiheadAttention)]
    for name, mha in targets:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, SplitQKVAttention.from_mha(mha))
    return len(targets)
