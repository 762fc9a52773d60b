"""Fused attention for SAM's frozen ViT image encoder, patched into a built model (no fork of segment-anything).

segment-anything's `image_encoder.Attention` materialises the attention matrix, adds the decomposed relative
position bias of MViTv2 to it, applies softmax and multiplies by v: three [B·heads, N, N] tensors (N = 4096 tokens
in the global blocks of SAM at 1024). The same computation through `torch.nn.functional.scaled_dot_product_attention`
passes the bias as an additive float mask,

    softmax(q kᵀ / √d + B_rel) v,   B_rel[(i_h, i_w), (j_h, j_w)] = q_(i)·R_h[i_h − j_h] + q_(i)·R_w[i_w − j_w],

(the bias is built from the *unscaled* q, exactly as `add_decomposed_rel_pos`), so one fused kernel replaces the
softmax chain: PyTorch's CPU flash kernel, and on CUDA the memory-efficient kernel (which takes a float mask).
This is the recipe of PyTorch's own fast SAM work (pytorch-labs/segment-anything-fast), without its custom
kernels. Global and windowed blocks share the code: a windowed block sees [B·windows, 14, 14, C] tokens.

`apply_sam_fast_path(sam, sdpa=True)` swaps the class of every encoder `Attention` module to a subclass whose
`forward` is `sdpa_attention_forward`; parameters, state-dict keys and the rest of the model are untouched, and
the swap is undone by `remove_sam_fast_path`. It is the one place the encoder is modified.

A new segment-anything release is checked in two ways:
- tests/test_sam_fast_path.py pins the original forward's behaviour: for vit_b's width, depth, heads and global
  indexes at a reduced input (random weights, non-zero rel-pos tables) it compares the patched encoder with the
  un-patched one (max abs error of the embedding) and the masks they decode (IoU); run it after upgrading.
- at patch time, `apply_sam_fast_path` runs the library's own `Attention.forward` and ours on one small random
  input per patched class and refuses to patch (ValueError) if they disagree, so a release that changed the
  attention (new bias, scale, layout) fails loudly at build time instead of silently computing something else.
"""

import sys
from typing import Dict, List, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "amp_dtype",
    "apply_sam_fast_path",
    "decomposed_rel_pos_bias",
    "patchable_attention_classes",
    "remove_sam_fast_path",
    "sdpa_attention_forward",
]

#: Max abs difference allowed between the library's forward and ours in the build-time self-check (fp32).
_SELF_CHECK_ATOL = 1e-4


def decomposed_rel_pos_bias(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: Tuple[int, int],
    k_size: Tuple[int, int],
) -> torch.Tensor:
    """MViTv2's decomposed relative-position bias as an additive attention mask.

    Same terms as segment-anything's `add_decomposed_rel_pos` (whose `get_rel_pos` is reused, including its
    interpolation of the tables), returned instead of being added to a materialised attention matrix.
    q: [B, heads, q_h·q_w, d] (unscaled); rel_pos_h: [L_h, d]; rel_pos_w: [L_w, d]
    -> [B, heads, q_h·q_w, k_h·k_w] in q's dtype.
    """
    from segment_anything.modeling.image_encoder import get_rel_pos

    q_h, q_w = q_size
    k_h, k_w = k_size
    r_h = get_rel_pos(q_h, k_h, rel_pos_h).to(q.dtype)  # [q_h, k_h, d]
    r_w = get_rel_pos(q_w, k_w, rel_pos_w).to(q.dtype)  # [q_w, k_w, d]
    B, heads, _, d = q.shape
    r_q = q.reshape(B, heads, q_h, q_w, d)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, r_h)  # [B, heads, q_h, q_w, k_h]
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, r_w)  # [B, heads, q_h, q_w, k_w]
    return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(B, heads, q_h * q_w, k_h * k_w)


def sdpa_attention_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`image_encoder.Attention.forward` through fused SDPA. x: [B, H, W, C] -> [B, H, W, C].

    The default SDPA scale is head_dim^-0.5, SAM's `self.scale`.
    """
    B, H, W, _ = x.shape
    heads = self.num_heads
    # [B, N, 3, heads, d] -> 3 x [B, heads, N, d]
    q, k, v = self.qkv(x).reshape(B, H * W, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    bias = None
    if self.use_rel_pos:
        bias = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (H, W), (H, W))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # [B, heads, N, d]
    return self.proj(out.transpose(1, 2).reshape(B, H, W, -1))


def patchable_attention_classes() -> List[Type[nn.Module]]:
    """The encoder attention classes this module knows: segment-anything's, and HQ-SAM's identical copy."""
    from segment_anything.modeling.image_encoder import Attention

    classes: List[Type[nn.Module]] = [Attention]
    # HQ-SAM (optional package): a model holding its modules has imported it; importing it here would only
    # slow down every build (and re-register its timm models).
    hq = sys.modules.get("segment_anything_hq.modeling.image_encoder")
    if hq is not None:
        classes.append(hq.Attention)
    return classes


_FAST_CLASSES: Dict[type, type] = {}


def _fast_class(cls: type) -> type:
    """A subclass of `cls` whose forward is `sdpa_attention_forward` (one per original class)."""
    if cls not in _FAST_CLASSES:
        _FAST_CLASSES[cls] = type(
            f"SDPA{cls.__name__}",
            (cls,),
            {"forward": sdpa_attention_forward, "__module__": __name__, "_sam_mi_original_class": cls},
        )
    return _FAST_CLASSES[cls]


@torch.no_grad()
def _self_check(module: nn.Module) -> None:
    """Compare the library's forward with ours on a small random input (fp32, the module's device)."""
    p = module.qkv.weight
    dim = p.shape[1]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 5, dim, generator=gen).to(p.device, torch.float32)  # non-square: catches H/W swaps
    cls = type(module)
    original = getattr(cls, "_sam_mi_original_class", cls)
    ref = original.forward(module, x)
    ours = sdpa_attention_forward(module, x)
    err = (ours - ref).abs().max().item()
    scale = ref.abs().max().item()
    if not err <= _SELF_CHECK_ATOL * max(1.0, scale):
        raise ValueError(
            f"{original.__module__}.{original.__name__}.forward no longer matches the SDPA fast path "
            f"(max abs error {err:.3g}): the installed segment-anything changed its attention. Set "
            f"MODEL.SAM_MI.SAM.SDPA False and update sam_mi/modeling/sam/fast_attention.py."
        )


def apply_sam_fast_path(sam_model: nn.Module, sdpa: bool = True, check: bool = True) -> int:
    """Route every image-encoder `Attention` of `sam_model` through fused SDPA (module docstring).

    Call once after the model is built and its weights are loaded (SAM is frozen). `sdpa=False` restores
    the original forward (same as `remove_sam_fast_path`). `check` runs the build-time self-check once per
    attention class. Models without segment-anything attention (SAM2, MobileSAM, FastSAM) are left as they are.
    Returns the number of modules now running the fast path (0 when sdpa=False).
    """
    if not sdpa:
        remove_sam_fast_path(sam_model)
        return 0
    known = tuple(patchable_attention_classes())
    checked = set()
    count = 0
    for module in sam_model.modules():
        cls = type(module)
        if cls in _FAST_CLASSES.values():
            count += 1
            continue
        if cls not in known:  # exact classes only: a subclass may have changed forward
            continue
        if check and cls not in checked:
            _self_check(module)
            checked.add(cls)
        module.__class__ = _fast_class(cls)
        count += 1
    return count


def remove_sam_fast_path(sam_model: nn.Module) -> int:
    """Undo `apply_sam_fast_path`; returns the number of modules restored."""
    count = 0
    for module in sam_model.modules():
        original: Optional[type] = getattr(type(module), "_sam_mi_original_class", None)
        if original is not None and type(module) in _FAST_CLASSES.values():
            module.__class__ = original
            count += 1
    return count


def amp_dtype(device: torch.device) -> Optional[torch.dtype]:
    """Autocast dtype for the frozen SAM on `device`: bf16 on CPU and on CUDA GPUs that support it, fp16 on
    older CUDA GPUs (fp16 has the range problems bf16 avoids, but is the only fast half type there), None
    (no autocast) on other devices."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16
    return None
