"""Text-guided Sparse Point Prompter (TSPP), Sec. 3.2 of SAM-MI.

Three parts:

* probability targets from ground truth (Eq. 3-5): :func:`tspp_targets`, :func:`sem_seg_to_grid_masks`,
  :func:`tspp_prob_targets`;
* point prompts on SAM's ``G x G`` grid: :func:`sample_points` (Bernoulli per grid point, Eq. 2),
  :func:`grid_points` (Table 5 "uniform grid"), :func:`random_points` (Table 5 "random sampling");
* the learned head :class:`TSPPHead` and its loss :func:`tspp_losses` (L_tspp = L_ce^mask + lambda_mse L_mse).

Point convention: (x, y) normalised to [0, 1] at grid-cell centres, x first, row-major order, exactly as
``segment_anything.utils.amg.build_point_grid``.
"""
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .tspp_context import ClassLinearAttention, class_context_in_chunks

# Elements of one [chunk, N, N] pairwise tensor in tspp_targets (N = grid points); 2^24 floats = 64 MiB.
_PAIRWISE_BUDGET = 1 << 24
# Half a grid cell: pixel centres sit half a cell inside the true mask boundary, so the discrete EDT is
# only accurate to about this much; see mask_skeleton.
_SKELETON_TOLERANCE = 0.5


def _grid_coords(d_h: int, d_w: int, device: torch.device) -> Tensor:
    """(row, col) of every grid point, row-major: Tensor[d_h*d_w, 2] float."""
    rows = torch.arange(d_h, device=device, dtype=torch.float32)
    cols = torch.arange(d_w, device=device, dtype=torch.float32)
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)


def mask_skeleton(masks: Tensor) -> Tuple[Tensor, Tensor]:
    """Skeletons and Euclidean distance transforms of binary masks (used by Eq. 3-4).

    EDT: D(p) = distance (grid units) from mask point p to the nearest background point, where the image
    border counts as background (a virtual background ring one cell outside the grid); D = 0 off the mask.

    Skeleton (our choice; the paper only says "skeleton ... obtained by distance transformation"): the
    centres of maximal inscribed discs (Blum's medial axis) with half a cell of tolerance,
        skel = {p in M : no q != p in M with D(q) - |p - q| >= D(p) - 1/2},
    i.e. p is dropped when its inscribed disc, shrunk by half a cell, fits inside another inscribed disc.
    Without the tolerance the digitised EDT makes every staircase boundary point a "maximal disc" and the
    skeleton is mostly noise; with it we get the centre lines of elongated parts, the centres of blobs and
    short corner branches (a pruned medial axis). A one-point mask is its own skeleton.

    Cost is quadratic in the number of grid points (pairwise tensors, chunked over masks); meant for the
    paper's 32 x 32 grid.

    Args:
        masks: Bool[K, d_h, d_w].
    Returns:
        (skeleton Bool[K, d_h, d_w], edt Tensor[K, d_h, d_w] float32).
    """
    if masks.dim() != 3 or masks.dtype != torch.bool:
        raise ValueError(f"masks must be a bool tensor [K, d_h, d_w], got {masks.dtype} {tuple(masks.shape)}")
    k, d_h, d_w = masks.shape
    if k == 0:
        return masks.clone(), masks.new_zeros((0, d_h, d_w), dtype=torch.float32)
    coords = _grid_coords(d_h, d_w, masks.device)
    dist = torch.cdist(coords, coords)  # [N, N]
    # distance to the virtual background ring just outside the grid
    border = torch.minimum(
        torch.minimum(coords[:, 0] + 1, d_h - coords[:, 0]), torch.minimum(coords[:, 1] + 1, d_w - coords[:, 1])
    )
    flat = masks.reshape(k, -1)
    n = flat.shape[1]
    eye = torch.eye(n, dtype=torch.bool, device=masks.device)
    chunk = max(1, _PAIRWISE_BUDGET // (n * n))
    skels, edts = [], []
    for s in range(0, k, chunk):  # chunks of masks, not pixels: memory bound only
        m = flat[s : s + chunk]
        # EDT: nearest background grid point (mask off) or the border ring
        to_bg = dist.unsqueeze(0).masked_fill(m.unsqueeze(1), float("inf")).amin(dim=2)
        edt = torch.minimum(to_bg, border.unsqueeze(0)) * m
        # q contains p: D(q) - |p-q| >= D(p) - tol, q in mask, q != p   -> [c, p, q]
        contains = (edt.unsqueeze(1) - dist.unsqueeze(0)) >= (edt.unsqueeze(2) - _SKELETON_TOLERANCE - 1e-6)
        contains &= m.unsqueeze(1) & ~eye
        skels.append(m & ~contains.any(dim=2))
        edts.append(edt)
    return torch.cat(skels).reshape(k, d_h, d_w), torch.cat(edts).reshape(k, d_h, d_w)


def tspp_targets(gt_masks: Tensor, g_p: int = 5, m_p: int = 10) -> Tensor:
    """Target sampling probabilities p (Eq. 3-5) from per-class masks sampled on the grid.

    p(x, y) = P_k exp(-d^2 / 2 sigma_k^2) / sum_{M_k} exp(-d^2 / 2 sigma_k^2) inside mask k, 0 outside all
    masks, with d the Euclidean distance (grid units) to the skeleton of M_k (see :func:`mask_skeleton`),
    sigma_k = max_{M_k} d / 3 (Eq. 4) and P_k = min(ceil(area_k / g_p), m_p) (Eq. 5, area in grid points).
    So each mask holds exactly P_k expected points and E[N_p] = sum_k P_k (Eq. 2).

    Degenerate cases: sigma_k = 0 (every mask point is on the skeleton, e.g. one-point or one-cell-wide
    masks) -> uniform weights over the mask; empty masks -> P_k = 0, contribute nothing; K = 0 -> zeros.
    Overlapping masks (not produced by semantic GT) contribute independently and add up, so E[N_p] is
    still sum_k P_k.

    Args:
        gt_masks: Bool[K, d_h, d_w], one mask per class present, sampled at the grid points.
        g_p: grid points per expected point (> 0).  m_p: cap on expected points per mask (>= 0).
    Returns:
        Tensor[d_h, d_w] float32.
    """
    if gt_masks.dim() != 3 or gt_masks.dtype != torch.bool:
        raise ValueError(f"gt_masks must be a bool tensor [K, d_h, d_w], got {gt_masks.dtype} {tuple(gt_masks.shape)}")
    if g_p <= 0 or m_p < 0:
        raise ValueError(f"need g_p > 0 and m_p >= 0, got g_p={g_p}, m_p={m_p}")
    k, d_h, d_w = gt_masks.shape
    if k == 0:
        return torch.zeros(d_h, d_w, device=gt_masks.device)
    skel, _ = mask_skeleton(gt_masks)
    m = gt_masks.reshape(k, -1)
    coords = _grid_coords(d_h, d_w, gt_masks.device)
    dist2 = torch.cdist(coords, coords).square()
    n = m.shape[1]
    chunk = max(1, _PAIRWISE_BUDGET // (n * n))
    d2 = torch.cat(
        [
            dist2.unsqueeze(0).masked_fill(~s.unsqueeze(1), float("inf")).amin(dim=2)
            for s in skel.reshape(k, -1).split(chunk)
        ]
    )  # [K, N]; inf only for empty masks (no skeleton)
    d2 = torch.where(m, d2, torch.zeros_like(d2))
    sigma2 = (d2.amax(dim=1) / 9.0).clamp_min(1e-12)  # sigma_k^2 = (max d / 3)^2, Eq. 4
    # when sigma_k = 0 all d = 0, so the clamp yields exp(0) = 1: uniform weights
    weights = torch.exp(-d2 / (2.0 * sigma2.unsqueeze(1))) * m
    area = m.sum(dim=1).float()
    p_k = torch.clamp(torch.ceil(area / g_p), max=float(m_p))  # Eq. 5
    p = weights * (p_k / weights.sum(dim=1).clamp_min(1e-12)).unsqueeze(1)  # Eq. 3
    return p.sum(dim=0).reshape(d_h, d_w)


def sem_seg_to_grid_masks(sem_seg: Tensor, grid_size: int, ignore_value: int = 255) -> Tensor:
    """Per-class masks of a label map sampled at the G x G grid-cell centres.

    Cell (i, j) reads the pixel containing the point ((j + 0.5) W / G, (i + 0.5) H / G) (the nearest pixel
    centre), the same points SAM is prompted with. One mask per class present at the sampled points,
    sorted by class id; ``ignore_value`` excluded.

    Args:
        sem_seg: LongTensor[H, W].
    Returns:
        Bool[K, G, G].
    """
    if sem_seg.dim() != 2:
        raise ValueError(f"sem_seg must be [H, W], got {tuple(sem_seg.shape)}")
    h, w = sem_seg.shape
    centres = (torch.arange(grid_size, device=sem_seg.device, dtype=torch.float64) + 0.5) / grid_size
    rows = (centres * h).floor().long().clamp_(0, h - 1)
    cols = (centres * w).floor().long().clamp_(0, w - 1)
    grid = sem_seg[rows][:, cols]
    classes = torch.unique(grid)
    classes = classes[classes != ignore_value]
    return grid.unsqueeze(0) == classes.view(-1, 1, 1)


def tspp_prob_targets(
    sem_seg: Tensor, grid_size: int, g_p: int = 5, m_p: int = 10, ignore_value: int = 255
) -> Tensor:
    """Batched Eq. 3-5 targets from label maps: LongTensor[B, H, W] -> Tensor[B, G, G]."""
    if sem_seg.dim() != 3:
        raise ValueError(f"sem_seg must be [B, H, W], got {tuple(sem_seg.shape)}")
    return torch.stack(
        [tspp_targets(sem_seg_to_grid_masks(s, grid_size, ignore_value), g_p, m_p) for s in sem_seg]
    )


def grid_points(grid_size: int, device: Union[str, torch.device] = "cpu") -> Tensor:
    """All G^2 grid points as (x, y) in [0, 1], row-major, identical to SAM's build_point_grid: [G*G, 2]."""
    centres = (torch.arange(grid_size, dtype=torch.float32, device=device) + 0.5) / grid_size
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([xs, ys], dim=-1).reshape(-1, 2)


def _draw_device(generator: Optional[torch.Generator], device: Union[str, torch.device]) -> torch.device:
    """The one rule for every random draw of the samplers below: draw on the generator's own device (a
    CUDA generator cannot fill a CPU tensor, nor a CPU generator a CUDA one: torch raises), then move the
    result to where it is used. Without a generator, draw on ``device`` from its default generator."""
    return generator.device if generator is not None else torch.device(device)


def random_points(
    grid_size: int,
    num: int,
    generator: Optional[torch.Generator] = None,
    device: Union[str, torch.device] = "cpu",
) -> Tensor:
    """``num`` distinct grid points drawn uniformly (Table 5 "random sampling"), in grid order: [num, 2] on
    ``device`` (drawn on the generator's device, see :func:`_draw_device`)."""
    if not 0 <= num <= grid_size * grid_size:
        raise ValueError(f"num must be in [0, {grid_size * grid_size}] for a {grid_size}x{grid_size} grid, got {num}")
    perm = torch.randperm(grid_size * grid_size, generator=generator, device=_draw_device(generator, device))
    idx = perm[:num].to(device).sort().values
    return grid_points(grid_size, device)[idx]


def sample_points(prob: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Sparse point prompts: one Bernoulli draw per grid point with probability clamp(p, 0, 1) (Eq. 2).

    Probabilities above 1 (allowed for small masks, see TSPPHead) just mean "always sampled", so
    E[N_p] = sum clamp(p, 0, 1). Points are returned in grid order as (x, y) cell centres in [0, 1].

    Args:
        prob: Tensor[G, G] (any d_h x d_w works).
        generator: optional torch.Generator on any device: the uniforms are drawn on its device (see
            :func:`_draw_device`); a per-image one comes from ``seeding.sampling_generator``.
    Returns:
        Tensor[N_p, 2] on prob's device.
    """
    if prob.dim() != 2:
        raise ValueError(f"prob must be one map [G, G], got {tuple(prob.shape)}")
    d_h, d_w = prob.shape
    u = torch.rand(prob.shape, generator=generator, device=_draw_device(generator, prob.device)).to(prob.device)
    keep = u < prob.detach().float().clamp(0.0, 1.0)
    i, j = keep.nonzero(as_tuple=True)
    return torch.stack([(j.float() + 0.5) / d_w, (i.float() + 0.5) / d_h], dim=-1)


class TSPPHead(nn.Module):
    """TSPP network (Sec. 3.2, Fig. 3c): cost maps S -> (sampling probabilities, class mask logits).

    1. MLP embeds every cost value (1 -> C channels), per class and pixel.
    2. One light attention block gives S_en: spatial context by a pre-norm depth-wise 3x3 conv per class
       map, class context by pre-norm linear attention over classes per pixel, then a pre-norm FFN; all
       residual. Linear in T and h*w, so 847-class vocabularies are fine.
    3. (a) mask logits: Linear(C -> 1) per class -> [B, T, h, w]; M^text = one-hot argmax over T.
       (b) probabilities: S_en is pooled over classes into a T-independent map: the softmax(mask
       logits)-weighted mean (features of the predicted class), the max over classes, and log of the
       expected area of the pixel's predicted class (sum_t softmax_t(p) * mean_pixels softmax_t), a direct
       cue for Eq. 5 (small masks need higher density). This map is resized bilinearly to G x G
       (align_corners=False puts samples at the cell centres, like the point grid), then
       conv3x3-GELU-conv3x3-GELU-conv1x1 and softplus: non-negative but not capped at 1, since Eq. 3
       targets exceed 1 on small masks.
    The caller detaches CLIP image features so these losses never reach CLIP's visual encoder (Sec. 3.2).
    """

    def __init__(self, hidden_dim: int = 32, grid_size: int = 32, num_heads: int = 4, class_chunk: int = 0) -> None:
        super().__init__()
        c = hidden_dim
        self.grid_size = grid_size
        self.class_chunk = class_chunk  # classes at a time (tspp_context.py; same result), 0 = all at once
        self.embed = nn.Sequential(nn.Linear(1, c), nn.GELU(), nn.Linear(c, c))
        self.norm_spatial = nn.LayerNorm(c)
        self.spatial = nn.Conv2d(c, c, kernel_size=3, padding=1, groups=c)
        self.norm_class = nn.LayerNorm(c)
        self.class_attn = ClassLinearAttention(c, num_heads)
        self.norm_ffn = nn.LayerNorm(c)
        self.ffn = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))
        self.mask_head = nn.Linear(c, 1)
        self.prob_head = nn.Sequential(
            nn.Conv2d(2 * c + 1, c, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv2d(c, c, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv2d(c, 1, kernel_size=1),
        )

    def _per_class(self, cost: Tensor) -> Tensor:
        """Embedding and spatial context of each class map: [B, t, h, w] -> [B, h*w, t, C]."""
        b, t, h, w = cost.shape
        x = self.embed(cost.unsqueeze(-1))  # [B, t, h, w, C]
        c = x.shape[-1]
        # spatial context: depth-wise conv on each class map
        y = self.norm_spatial(x).reshape(b * t, h, w, c).permute(0, 3, 1, 2)
        x = x + self.spatial(y).permute(0, 2, 3, 1).reshape(b, t, h, w, c)
        return x.permute(0, 2, 3, 1, 4).reshape(b, h * w, t, c)

    def forward(self, cost: Tensor) -> Tuple[Tensor, Tensor]:
        """cost: Tensor[B, T, h, w] (cosine similarities) -> (prob [B, G, G] >= 0, mask_logits [B, T, h, w])."""
        if cost.dim() != 4 or cost.shape[1] == 0:
            raise ValueError(f"cost must be [B, T, h, w] with T >= 1, got {tuple(cost.shape)}")
        b, t, h, w = cost.shape
        slices, s_en = class_context_in_chunks(
            cost, self.class_chunk, self._per_class, self.norm_class, self.class_attn, self.norm_ffn, self.ffn
        )  # S_en, [B, h*w, t_i, C] per class chunk
        mask_logits = torch.cat([self.mask_head(x).squeeze(-1) for x in s_en], dim=2)  # [B, h*w, T]
        mask_logits = mask_logits.transpose(1, 2).reshape(b, t, h, w)

        cls_prob = mask_logits.softmax(dim=1)  # [B, T, h, w]
        weights = cls_prob.flatten(2).transpose(1, 2)  # [B, h*w, T]
        weighted = sum(torch.einsum("bptc,bpt->bpc", x, weights[:, :, s]) for s, x in zip(slices, s_en))
        maxed = torch.stack([x.amax(dim=2) for x in s_en]).amax(dim=0)  # [B, h*w, C]
        weighted, maxed = (y.transpose(1, 2).reshape(b, -1, h, w) for y in (weighted, maxed))
        class_area = cls_prob.mean(dim=(2, 3))  # [B, T], fraction of the image per class
        pixel_area = torch.einsum("bthw,bt->bhw", cls_prob, class_area).clamp_min(1e-6).log().unsqueeze(1)
        pooled = torch.cat([weighted, maxed, pixel_area], dim=1)  # [B, 2C+1, h, w]
        pooled = F.interpolate(pooled, size=(self.grid_size, self.grid_size), mode="bilinear", align_corners=False)
        prob = F.softplus(self.prob_head(pooled)).squeeze(1)
        return prob, mask_logits


def tspp_losses(
    prob: Tensor,
    mask_logits: Tensor,
    sem_seg: Tensor,
    prob_targets: Tensor,
    lambda_mse: float,
    ignore_value: int = 255,
) -> Dict[str, Tensor]:
    """L_tspp = L_ce^mask + lambda_mse L_mse (Sec. 3.2); the caller applies lambda_tspp in stage 2.

    L_ce^mask: cross-entropy of mask_logits upsampled (bilinear) to the label size, ignoring
    ``ignore_value`` (an all-ignored batch gives 0, not NaN). L_mse: mean squared error over the grid.

    Args:
        prob: [B, G, G]; mask_logits: [B, T, h, w]; sem_seg: LongTensor[B, H, W] with labels in [0, T) or
        ignore_value; prob_targets: [B, G, G] (see :func:`tspp_prob_targets`).
    Returns:
        {"loss_tspp_ce": scalar, "loss_tspp_mse": lambda_mse * scalar}.
    """
    if prob.shape != prob_targets.shape:
        raise ValueError(f"prob {tuple(prob.shape)} and prob_targets {tuple(prob_targets.shape)} must match")
    if mask_logits.dim() != 4 or sem_seg.dim() != 3 or mask_logits.shape[0] != sem_seg.shape[0]:
        raise ValueError(f"need mask_logits [B,T,h,w] and sem_seg [B,H,W], got {tuple(mask_logits.shape)}, "
                         f"{tuple(sem_seg.shape)}")
    valid = sem_seg != ignore_value
    if valid.any() and int(sem_seg[valid].max()) >= mask_logits.shape[1]:
        raise ValueError(f"sem_seg has label {int(sem_seg[valid].max())} but only {mask_logits.shape[1]} classes; "
                         "pass the training vocabulary's logits or map extra labels to ignore_value")
    logits = F.interpolate(mask_logits, size=sem_seg.shape[-2:], mode="bilinear", align_corners=False)
    ce = F.cross_entropy(logits, sem_seg, ignore_index=ignore_value, reduction="sum")
    ce = ce / valid.sum().clamp_min(1)
    mse = F.mse_loss(prob, prob_targets.to(prob.dtype))
    return {"loss_tspp_ce": ce, "loss_tspp_mse": lambda_mse * mse}
