"""Guided (shifted-)window attention blocks for CAT-Seg's spatial cost aggregation.

CAT-Seg (and SAM-MI, which reuses it) aggregates every class's cost slice spatially with two Swin blocks
(W-MSA, then SW-MSA) whose queries and keys also see the projected appearance guidance. The details below
follow CAT-Seg's ``SwinTransformerBlock`` / ``WindowAttention`` / ``SwinTransformerBlockWrapper``
(cvlab-kaist/CAT-Seg cat_seg/modeling/transformer/model.py) exactly, so that its checkpoints load and reproduce:

- pre-norm blocks; ``q, k = Linear(dim + g -> dim)`` on ``concat[norm1(x), guidance]``, ``v = Linear(dim -> dim)``
  on ``norm1(x)`` only; ``proj`` output projection; **no** relative position bias;
- shifted windows use a cyclic roll by ``window_size // 2`` and an additive mask of ``-100`` (not ``-inf``)
  between tokens that came from different image regions;
- the shifted block keeps its mask as a *persistent* buffer ``attn_mask`` (it is in CAT-Seg checkpoints); the
  unshifted block registers ``None`` so that no key appears;
- if the grid is not larger than the window, the window shrinks to the grid and the shift is dropped (Swin rule).

Memory and speed (same outputs up to float rounding, tests/test_aggregator.py checks them against a loop-by-loop
reference): the tokens of all B*T class slices share one guidance map per image, so instead of materialising the
repeated ``(B*T, N, dim + g)`` concatenation, the guidance half of the q/k projections is computed once per
image and broadcast over classes (``W [x; g] + b = W_x x + (W_g g + b)``); q, k and v come from one GEMM; the
cyclic shift and the window partition (and their inverses) are one gather of the token axis each; attention is
PyTorch's fused ``scaled_dot_product_attention`` with the windows folded into the head axis.

Layout convention: tokens are channel-last ``[B, T, H, W, C]`` (T = classes), guidance ``[B, H, W, Cg]``.
"""
import functools
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """Split the two spatial dims in front of the channel dim into non-overlapping windows.

    Args:
        x: ``[*lead, H, W, C]`` with H and W divisible by ``window_size``.
    Returns:
        ``[*lead, nW, ws*ws, C]`` with windows in row-major order (nW = H/ws * W/ws), tokens row-major in a window.
    """
    *lead, H, W, C = x.shape
    ws = window_size
    x = x.reshape(*lead, H // ws, ws, W // ws, ws, C)
    n = len(lead)
    # (*lead, Hb, ws, Wb, ws, C) -> (*lead, Hb, Wb, ws, ws, C)
    x = x.permute(*range(n), n, n + 2, n + 1, n + 3, n + 4)
    return x.reshape(*lead, (H // ws) * (W // ws), ws * ws, C)


def window_reverse(windows: Tensor, window_size: int, H: int, W: int) -> Tensor:
    """Inverse of :func:`window_partition`: ``[*lead, nW, ws*ws, C]`` -> ``[*lead, H, W, C]``."""
    *lead, _, _, C = windows.shape
    ws = window_size
    x = windows.reshape(*lead, H // ws, W // ws, ws, ws, C)
    n = len(lead)
    x = x.permute(*range(n), n, n + 2, n + 1, n + 3, n + 4)
    return x.reshape(*lead, H, W, C)


def shifted_window_mask(H: int, W: int, window_size: int, shift_size: int, fill: float = -100.0) -> Tensor:
    """Additive attention mask of Swin's SW-MSA after a cyclic shift by ``-shift_size``.

    The (shifted) grid is cut into 3x3 regions by the slices ``[0, -ws)``, ``[-ws, -shift)``, ``[-shift, end)``
    in each axis; two tokens of one window may attend to each other only if they come from the same region.

    Returns:
        ``[nW, ws*ws, ws*ws]`` float tensor: 0 where allowed, ``fill`` (CAT-Seg: -100) elsewhere.
    """
    ws, s = window_size, shift_size
    # Region id per row / column: 0 for [0, H-ws), 1 for [H-ws, H-s), 2 for [H-s, H). Vectorised form of Swin's
    # double loop over slices; the 2-D id is row_id * 3 + col_id.
    rows = torch.arange(H)
    cols = torch.arange(W)
    row_id = (rows >= H - ws).long() + (rows >= H - s).long()
    col_id = (cols >= W - ws).long() + (cols >= W - s).long()
    region = (row_id[:, None] * 3 + col_id[None, :]).to(torch.float32)  # [H, W]
    region_windows = window_partition(region[:, :, None], ws)[..., 0]  # [nW, N]
    diff = region_windows[:, None, :] - region_windows[:, :, None]  # [nW, N, N]
    return torch.zeros_like(diff).masked_fill(diff != 0, fill)


@functools.lru_cache(maxsize=32)
def _window_order(H: int, W: int, window_size: int, shift_size: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    """Token order of Swin's ``roll(-shift)`` then :func:`window_partition` on a row-major H x W grid, and its
    inverse (``window_reverse`` then ``roll(+shift)``): one gather each way instead of a roll and a permute.

    Cached, so built outside inference mode: a cached inference tensor could not be used by a later
    training step (autograd refuses to save inference tensors for backward)."""
    with torch.inference_mode(False):
        return _build_window_order(H, W, window_size, shift_size, device)


def _build_window_order(H: int, W: int, window_size: int, shift_size: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    ws, s = window_size, shift_size
    rows = (torch.arange(H) + s) % H  # row of the unshifted grid at each row of the shifted one
    cols = (torch.arange(W) + s) % W
    grid = (rows[:, None] * W + cols[None, :])[:, :, None]  # [H, W, 1] flat source index
    order = window_partition(grid, ws).reshape(-1)  # [nW*N]
    return order.to(device), torch.argsort(order).to(device)


class Mlp(nn.Module):
    """timm-compatible ``Mlp`` (names ``fc1``/``fc2``), GELU (exact), no dropout: ``fc2(gelu(fc1(x)))``."""

    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class GuidedWindowAttention(nn.Module):
    """Window MSA whose queries/keys see the appearance guidance (CAT-Seg ``WindowAttention``).

    Args:
        dim: token channels C. guidance_dim: guidance channels Cg (0 = no guidance). num_heads: heads
        (head dim C / heads, scale head_dim^-0.5).
    """

    def __init__(self, dim: int, guidance_dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"hidden dim {dim} must be divisible by the number of heads {num_heads}")
        self.dim = dim
        self.guidance_dim = guidance_dim
        self.num_heads = num_heads
        self.q = nn.Linear(dim + guidance_dim, dim)
        self.k = nn.Linear(dim + guidance_dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, guidance: Optional[Tensor], mask: Optional[Tensor]) -> Tensor:
        """
        Args:
            x: normalised window tokens ``[B, T, nW, N, C]``.
            guidance: normalised guidance windows ``[B, nW, N, Cg]`` (or None when guidance_dim == 0).
            mask: additive mask ``[nW, N, N]`` or None.
        Returns:
            ``[B, T, nW, N, C]``.
        """
        B, T, nW, N, C = x.shape
        h = self.num_heads
        d = C // h
        # q, k and v of the tokens in one GEMM; the guidance half of q and k once per image, added in place
        weight = torch.cat([self.q.weight[:, :C], self.k.weight[:, :C], self.v.weight])
        qkv = F.linear(x, weight, torch.cat([self.q.bias, self.k.bias, self.v.bias]))  # [B,T,nW,N,3C]
        if self.guidance_dim > 0:
            if guidance is None:
                raise ValueError("this block was built with guidance_dim > 0: pass the appearance guidance")
            g = F.linear(guidance, torch.cat([self.q.weight[:, C:], self.k.weight[:, C:]]))  # [B,nW,N,2C]
            qkv[..., : 2 * C] += g.unsqueeze(1)
        # windows are folded into the head axis, so one [1, nW*h, N, N] mask broadcasts over all B*T slices
        qkv = qkv.reshape(B * T, nW, N, 3, h, d).permute(3, 0, 1, 4, 2, 5).reshape(3, B * T, nW * h, N, d)
        attn_mask = None
        if mask is not None:
            attn_mask = mask.to(x.dtype)[:, None].expand(nW, h, N, N).reshape(1, nW * h, N, N)
        # softmax(q k^T * head_dim^-0.5 + mask) v, as CAT-Seg (scale is SDPA's default)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)
        out = out.reshape(B, T, nW, h, N, d).transpose(3, 4).reshape(B, T, nW, N, C)
        return self.proj(out)


class GuidedSwinBlock(nn.Module):
    """Pre-norm Swin block (CAT-Seg ``SwinTransformerBlock``) with appearance-guided q/k.

    Args:
        dim: token channels. guidance_dim: appearance guidance channels. input_resolution: (H, W) of the grid.
        num_heads: heads. window_size: window side. shift_size: cyclic shift (0 = W-MSA). mlp_ratio: MLP width.
    """

    def __init__(
        self,
        dim: int,
        guidance_dim: int,
        input_resolution: Tuple[int, int],
        num_heads: int = 4,
        window_size: int = 7,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        H, W = input_resolution
        self.input_resolution = (H, W)
        if min(H, W) <= window_size:
            # Swin rule kept by CAT-Seg: a window covering the whole grid needs no shift.
            shift_size, window_size = 0, min(H, W)
        if H % window_size or W % window_size:
            raise ValueError(
                f"feature resolution {(H, W)} must be divisible by the window size {window_size}; "
                "choose a window size that divides the CLIP feature grid"
            )
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift size {shift_size} must lie in [0, window size {window_size})")
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = GuidedWindowAttention(dim, guidance_dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        mask = shifted_window_mask(H, W, window_size, shift_size) if shift_size > 0 else None
        # persistent on purpose: CAT-Seg checkpoints contain `block_2.attn_mask`
        self.register_buffer("attn_mask", mask)

    def forward(self, x: Tensor, guidance: Optional[Tensor]) -> Tensor:
        """
        Args:
            x: ``[B, T, H, W, C]`` cost embeddings. guidance: normalised guidance ``[B, H, W, Cg]`` or None.
        Returns:
            ``[B, T, H, W, C]``.
        """
        H, W = self.input_resolution
        if x.shape[2:4] != (H, W):
            raise ValueError(f"spatial aggregation built for a {H}x{W} grid, got {tuple(x.shape[2:4])}")
        order, inverse = _window_order(H, W, self.window_size, self.shift_size, x.device)
        nW, N = (H // self.window_size) * (W // self.window_size), self.window_size**2

        def to_windows(t: Tensor) -> Tensor:  # [*, H, W, C] -> [*, nW, N, C]: cyclic shift + partition, one copy
            return t.flatten(-3, -2).index_select(-2, order).unflatten(-2, (nW, N))

        shortcut = x
        g_windows = to_windows(guidance) if guidance is not None else None
        out = self.attn(to_windows(self.norm1(x)), g_windows, self.attn_mask)
        out = out.flatten(-3, -2).index_select(-2, inverse).unflatten(-2, (H, W))  # back to the grid
        x = shortcut + out
        return x + self.mlp(self.norm2(x))


class SwinTransformerBlockWrapper(nn.Module):
    """W-MSA block then SW-MSA block (shift = window // 2) with one shared guidance LayerNorm (CAT-Seg names)."""

    def __init__(
        self, dim: int, guidance_dim: int, input_resolution: Tuple[int, int], nheads: int = 4, window_size: int = 12
    ) -> None:
        super().__init__()
        self.block_1 = GuidedSwinBlock(dim, guidance_dim, input_resolution, nheads, window_size, shift_size=0)
        self.block_2 = GuidedSwinBlock(
            dim, guidance_dim, input_resolution, nheads, window_size, shift_size=window_size // 2
        )
        self.guidance_norm = nn.LayerNorm(guidance_dim) if guidance_dim > 0 else None

    def forward(self, x: Tensor, guidance: Optional[Tensor]) -> Tensor:
        """
        Args:
            x: ``[B, T, H, W, C]``. guidance: projected appearance guidance ``[B, Cg, H, W]`` or None.
        Returns:
            ``[B, T, H, W, C]``.
        """
        g = None
        if guidance is not None and self.guidance_norm is not None:
            # LayerNorm is per token, so normalising once per image equals CAT-Seg's norm of the repeated map
            g = self.guidance_norm(guidance.permute(0, 2, 3, 1))
        x = self.block_1(x, g)
        return self.block_2(x, g)
