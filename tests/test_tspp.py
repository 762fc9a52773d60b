"""TSPP (Sec. 3.2): Eq. 3-5 targets and the head, against loop / scipy references (sampling: test_tspp_sampling.py)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from sam_mi.modeling.tspp import (
    TSPPHead,
    mask_skeleton,
    sem_seg_to_grid_masks,
    tspp_losses,
    tspp_prob_targets,
    tspp_targets,
)
from sam_mi.modeling.tspp_heads import PaperTSPPHead

HEADS = [PaperTSPPHead, TSPPHead]


# ----------------------------------------------------------------------------- references (loops)
def ref_edt(mask: np.ndarray) -> np.ndarray:
    """scipy EDT with the image border as background (pad one background ring)."""
    return ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]


def ref_skeleton(mask: np.ndarray, tol: float = 0.5) -> np.ndarray:
    """Centres of maximal inscribed discs with half a cell tolerance, by brute force over point pairs."""
    d = ref_edt(mask)
    pts = [tuple(p) for p in np.argwhere(mask)]
    skel = np.zeros_like(mask)
    for p in pts:
        contained = any(
            q != p and d[q] - math.dist(p, q) >= d[p] - tol - 1e-6 for q in pts
        )
        skel[p] = not contained
    return skel


def ref_skeleton_distance(mask: np.ndarray) -> np.ndarray:
    skel = ref_skeleton(mask)
    sk = np.argwhere(skel)
    out = np.zeros(mask.shape)
    for p in np.argwhere(mask):
        out[tuple(p)] = min(math.dist(p, q) for q in sk)
    return out


def ref_targets(masks: np.ndarray, g_p: int, m_p: int) -> np.ndarray:
    out = np.zeros(masks.shape[1:])
    for m in masks:
        area = int(m.sum())
        if area == 0:
            continue
        d = ref_skeleton_distance(m)
        sigma = d[m].max() / 3
        w = np.exp(-(d**2) / (2 * sigma**2)) if sigma > 0 else np.ones_like(d)
        w = w * m
        out += w / w.sum() * min(math.ceil(area / g_p), m_p)
    return out


def random_label_grid(gen: torch.Generator, h: int, w: int, k: int) -> torch.Tensor:
    """Voronoi-like label map with k seeds: blobs of varied shapes and sizes."""
    seeds = torch.rand(k, 2, generator=gen) * torch.tensor([h, w])
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    d = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
    return d.argmin(dim=0)


def masks_of(labels: torch.Tensor) -> torch.Tensor:
    return labels[None] == torch.unique(labels)[:, None, None]


# ----------------------------------------------------------------------------- Eq. 3-5
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_edt_and_skeleton_match_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    masks = masks_of(random_label_grid(gen, 11, 14, 4))
    masks = torch.cat([masks, torch.ones(1, 11, 14, dtype=torch.bool)])  # whole image: border only
    skel, edt = mask_skeleton(masks)
    for k, m in enumerate(masks.numpy()):
        np.testing.assert_allclose(edt[k].numpy(), ref_edt(m), atol=1e-5)
        np.testing.assert_array_equal(skel[k].numpy(), ref_skeleton(m))
        assert not (skel[k] & ~masks[k]).any()


@pytest.mark.parametrize("seed,g_p,m_p", [(0, 5, 10), (1, 3, 4), (2, 1, 100), (3, 7, 2)])
def test_targets_match_loop_reference(seed, g_p, m_p):
    gen = torch.Generator().manual_seed(seed)
    masks = masks_of(random_label_grid(gen, 12, 10, 5))
    out = tspp_targets(masks, g_p, m_p)
    assert out.shape == (12, 10)
    np.testing.assert_allclose(out.numpy(), ref_targets(masks.numpy(), g_p, m_p), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_per_mask_sum_and_zero_outside(seed):
    gen = torch.Generator().manual_seed(seed)
    labels = random_label_grid(gen, 32, 32, 12)
    labels[labels == 3] = -1  # a "no mask" region
    masks = masks_of(labels)[torch.unique(labels) >= 0]
    g_p, m_p = [(5, 10), (2, 40), (9, 3), (4, 7)][seed]
    out = tspp_targets(masks, g_p, m_p)
    assert (out >= 0).all()
    assert (out[~masks.any(0)] == 0).all()
    for m in masks:
        expected = min(math.ceil(int(m.sum()) / g_p), m_p)
        assert out[m].sum().item() == pytest.approx(expected, rel=1e-5)
    # Eq. 2: expected point count = sum of P_k
    total = sum(min(math.ceil(int(m.sum()) / g_p), m_p) for m in masks)
    assert out.sum().item() == pytest.approx(total, rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_gaussian_falloff_from_skeleton(seed):
    gen = torch.Generator().manual_seed(seed)
    masks = masks_of(random_label_grid(gen, 14, 14, 4))
    out = tspp_targets(masks).numpy()
    for m in masks.numpy():
        d = ref_skeleton_distance(m)[m]
        v = out[m]
        farther = d[:, None] > d[None, :] + 1e-9
        assert (v[:, None] <= v[None, :] + 1e-7)[farther].all()
        assert v.max() == pytest.approx(v[d == 0].max())  # skeleton points get the highest value


def test_degenerate_cases():
    assert torch.equal(tspp_targets(torch.zeros(0, 6, 7, dtype=torch.bool)), torch.zeros(6, 7))
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, 3, 4] = True  # one point: sigma = 0
    masks[1, 6, 1:7] = True  # one-cell-wide line: all on the skeleton, uniform
    out = tspp_targets(masks, g_p=5, m_p=10)  # mask 2 empty: contributes nothing
    assert out[3, 4].item() == pytest.approx(1.0)
    line = out[6, 1:7]
    assert torch.allclose(line, torch.full_like(line, 2.0 / 6))  # P = ceil(6/5) = 2
    assert torch.equal(out, tspp_targets(masks[:2], g_p=5, m_p=10))
    assert not torch.isnan(out).any()
    full = tspp_targets(torch.ones(1, 5, 5, dtype=torch.bool), g_p=5, m_p=3)
    assert full.sum().item() == pytest.approx(3.0) and full[2, 2] == full.max()
    assert tspp_targets(masks, g_p=5, m_p=0).abs().sum() == 0


def test_overlapping_masks_add_up():
    masks = torch.zeros(2, 10, 10, dtype=torch.bool)
    masks[0, 1:7, 1:7] = True
    masks[1, 4:9, 3:9] = True
    out = tspp_targets(masks)
    torch.testing.assert_close(out, tspp_targets(masks[:1]) + tspp_targets(masks[1:]))


def test_bad_input_raises():
    with pytest.raises(ValueError):
        tspp_targets(torch.ones(1, 4, 4))  # float, not bool
    with pytest.raises(ValueError):
        tspp_targets(torch.ones(1, 4, 4, dtype=torch.bool), g_p=0)


# ----------------------------------------------------------------------------- label map -> grid masks
@pytest.mark.parametrize("h,w,g", [(37, 53, 8), (64, 64, 32), (10, 7, 5)])
def test_sem_seg_to_grid_masks(h, w, g):
    gen = torch.Generator().manual_seed(h)
    sem = torch.randint(0, 6, (h, w), generator=gen)
    sem[sem == 5] = 255
    masks = sem_seg_to_grid_masks(sem, g, ignore_value=255)
    ref = torch.empty(g, g, dtype=torch.long)
    for i in range(g):
        for j in range(g):  # pixel whose extent contains the cell centre
            ref[i, j] = sem[int((i + 0.5) / g * h), int((j + 0.5) / g * w)]
    classes = sorted(set(ref.flatten().tolist()) - {255})
    assert masks.dtype == torch.bool and masks.shape == (len(classes), g, g)
    for k, c in enumerate(classes):
        assert torch.equal(masks[k], ref == c)
    batched = tspp_prob_targets(torch.stack([sem, sem.flip(0)]), g, 3, 6, 255)
    assert batched.shape == (2, g, g)
    torch.testing.assert_close(batched[1], tspp_targets(sem_seg_to_grid_masks(sem.flip(0), g), 3, 6))


# ----------------------------------------------------------------------------- head and losses
@pytest.mark.parametrize("head_cls", HEADS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("t", [1, 3, 300])
def test_head_shapes_nonnegative_and_gradients(t, head_cls):
    torch.manual_seed(0)
    head = head_cls(hidden_dim=16, grid_size=12, num_heads=4)
    cost = torch.rand(2, t, 6, 5) * 2 - 1
    prob, logits = head(cost)
    assert prob.shape == (2, 12, 12) and logits.shape == (2, t, 6, 5)
    assert (prob >= 0).all() and torch.isfinite(prob).all()
    sem = torch.randint(0, t, (2, 20, 18))
    sem[:, :3] = 255
    losses = tspp_losses(prob, logits, sem, torch.rand(2, 12, 12), lambda_mse=0.5)
    sum(losses.values()).backward()
    for name, p in head.named_parameters():
        if t == 1 and name.startswith(("mask_proj", "mask_head")):
            continue  # one class: the cross-entropy is constant, M^text is trivially that class
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("head_cls", HEADS, ids=lambda c: c.__name__)
def test_head_is_class_order_equivariant(head_cls):
    """Mask logits follow a permutation of the classes; the probability map does not change."""
    torch.manual_seed(0)
    head = head_cls(hidden_dim=8, grid_size=8, num_heads=2)
    cost = torch.randn(1, 5, 4, 4)
    perm = torch.tensor([3, 0, 4, 1, 2])
    p1, l1 = head(cost)
    p2, l2 = head(cost[:, perm])
    torch.testing.assert_close(p1, p2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(l1[:, perm], l2, atol=1e-5, rtol=1e-5)


def test_losses_match_manual():
    gen = torch.Generator().manual_seed(0)
    prob, tgt = torch.rand(2, 4, 4, generator=gen), torch.rand(2, 4, 4, generator=gen)
    logits = torch.randn(2, 3, 5, 5, generator=gen)
    sem = torch.randint(0, 3, (2, 10, 10), generator=gen)
    sem[0, 0] = 255
    out = tspp_losses(prob, logits, sem, tgt, lambda_mse=0.3)
    up = F.interpolate(logits, size=(10, 10), mode="bilinear", align_corners=False)
    logp = up.log_softmax(1)
    valid = sem != 255
    ce = -logp.permute(0, 2, 3, 1)[valid].gather(1, sem[valid][:, None]).mean()
    torch.testing.assert_close(out["loss_tspp_ce"], ce)
    torch.testing.assert_close(out["loss_tspp_mse"], 0.3 * ((prob - tgt) ** 2).mean())
    all_ignored = tspp_losses(prob, logits, torch.full_like(sem, 255), tgt, 0.3)["loss_tspp_ce"]
    assert all_ignored.item() == 0.0
    with pytest.raises(ValueError, match="classes"):
        tspp_losses(prob, logits, torch.full_like(sem, 3), tgt, 0.3)


def test_paper_head_structure():
    """Fig. 3c: MLP + attention block -> S_en -> two linear projection heads; G x G from h x w by resizing."""
    head = PaperTSPPHead(hidden_dim=32, grid_size=32)
    assert isinstance(head.mask_proj, torch.nn.Linear) and isinstance(head.prob_proj, torch.nn.Linear)
    assert head.mask_proj.out_features == head.prob_proj.out_features == 1
    prob, logits = head(torch.rand(2, 7, 24, 24) * 2 - 1)
    assert prob.shape == (2, 32, 32) and logits.shape == (2, 7, 24, 24)
    # L_mse reaches the probability head and S_en, not the mask projection (detached class weights)
    F.mse_loss(prob, torch.rand_like(prob)).backward()
    assert head.mask_proj.weight.grad is None and head.prob_proj.weight.grad.abs().sum() > 0
    assert head.embed[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="T >= 1"):
        head(torch.rand(1, 0, 4, 4))


@pytest.fixture
def paper_head_registered():
    """The paper's head, registered by prompter.py."""
    from sam_mi.modeling.prompter import TSPP_HEAD_REGISTRY

    assert TSPP_HEAD_REGISTRY.get("PaperTSPPHead") is PaperTSPPHead
    yield "PaperTSPPHead"


def test_paper_head_drives_the_tiny_model(synthetic_root, paper_head_registered):
    """Chosen by MODEL.SAM_MI.TSPP.HEAD_NAME, the paper head honours the prompter's contract inside SAMMI:
    stage-1 and stage-2 losses, gradients to both projection heads, points for SAM at test time."""
    from detectron2.modeling import build_model

    from conftest import tiny_cfg

    g = torch.Generator().manual_seed(0)
    batch = [{"image": torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8, generator=g),
              "sem_seg": torch.randint(0, 5, (128, 128), generator=g)}]
    opts = ["MODEL.SAM_MI.TSPP.HEAD_NAME", paper_head_registered]
    torch.manual_seed(0)
    stage1 = build_model(tiny_cfg("configs/tiny/sam_mi_tiny_stage1.yaml", opts=opts)).train()
    assert isinstance(stage1.prompter.head, PaperTSPPHead)
    assert {n for n, p in stage1.named_parameters() if p.requires_grad} == {
        "prompter.head." + n for n, _ in stage1.prompter.head.named_parameters()}
    assert set(stage1(batch)) == {"loss_tspp_ce", "loss_tspp_mse"}
    torch.manual_seed(0)
    model = build_model(tiny_cfg(opts=opts)).train()
    losses = model(batch)
    assert {"loss_tspp_ce", "loss_tspp_mse", "loss_sem_seg"} <= set(losses)
    sum(losses.values()).backward()
    head = model.prompter.head
    assert head.prob_proj.weight.grad.abs().sum() > 0 and head.mask_proj.weight.grad.abs().sum() > 0
    model.eval()
    out = model([{"image": batch[0]["image"], "height": 128, "width": 128}])[0]
    assert out["sem_seg"].shape[-2:] == (128, 128) and out["sam_mi"]["num_points"] > 0
