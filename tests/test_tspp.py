"""TSPP (Sec. 3.2): Eq. 2-5 targets, grid sampling and the head, against loop / scipy references."""
import hashlib
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from segment_anything.utils.amg import build_point_grid

from conftest import REPO

from sam_mi.modeling.tspp import (
    TSPPHead,
    grid_points,
    mask_skeleton,
    random_points,
    sample_points,
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


# ----------------------------------------------------------------------------- points
@pytest.mark.parametrize("g", [32, 7, 1])
def test_grid_points_match_sam(g):
    ours = grid_points(g)
    np.testing.assert_allclose(ours.numpy(), build_point_grid(g), atol=1e-6)


def test_sample_points_frequency_and_coordinates():
    gen = torch.Generator().manual_seed(0)
    prob = torch.rand(4, 5, generator=gen) * 2.0 - 0.5  # covers < 0 and > 1
    prob[0, 0], prob[0, 1] = -1.0, 3.0
    xs = ((torch.arange(5) + 0.5) / 5).repeat(4).tolist()
    ys = ((torch.arange(4) + 0.5) / 4).repeat_interleave(5).tolist()
    grid = {(round(x, 6), round(y, 6)) for x, y in zip(xs, ys)}
    counts, n_draws, n_points = torch.zeros(4, 5), 3000, []
    for _ in range(n_draws):
        pts = sample_points(prob, generator=gen)
        n_points.append(len(pts))
        for x, y in pts.tolist():
            assert (round(x, 6), round(y, 6)) in grid
        j = (pts[:, 0] * 5 - 0.5).round().long()
        i = (pts[:, 1] * 4 - 0.5).round().long()
        counts[i, j] += 1
    p = prob.clamp(0, 1)
    freq = counts / n_draws
    tol = 5 * torch.sqrt(p * (1 - p) / n_draws) + 1e-9
    assert ((freq - p).abs() <= tol).all()
    assert freq[0, 0] == 0 and freq[0, 1] == 1
    mean_np = float(np.mean(n_points))
    assert abs(mean_np - p.sum().item()) < 5 * math.sqrt((p * (1 - p)).sum().item() / n_draws)


def test_sample_points_seeded_and_ordered():
    prob = torch.full((6, 6), 0.5)
    a = sample_points(prob, torch.Generator().manual_seed(3))
    b = sample_points(prob, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape[1] == 2
    idx = ((a[:, 1] * 6 - 0.5).round() * 6 + (a[:, 0] * 6 - 0.5).round()).tolist()
    assert idx == sorted(idx)  # grid (row-major) order, x first
    assert sample_points(torch.zeros(6, 6)).shape == (0, 2)


def test_random_points():
    pts = random_points(8, 20, torch.Generator().manual_seed(0))
    assert pts.shape == (20, 2)
    grid = grid_points(8)
    match = (pts[:, None] - grid[None]).abs().sum(-1) < 1e-6
    assert (match.sum(1) == 1).all() and match.any(0).sum() == 20  # on the grid, all distinct
    assert torch.equal(random_points(8, 64), grid)
    with pytest.raises(ValueError):
        random_points(4, 17)


class _FakeCudaGenerator:
    """Stands in for a CUDA generator on a CPU-only machine: reports device "cuda", draws from a CPU one."""

    def __init__(self, seed: int):
        self.device = torch.device("cuda")
        self.inner = torch.Generator().manual_seed(seed)


@pytest.fixture
def cuda_generator_rule(monkeypatch):
    """Install torch's CUDA rule on the CPU: a tensor drawn with a generator must be created on the
    generator's device (torch raises "Expected a 'cuda' device type for generator" otherwise)."""
    real_rand, real_randperm = torch.rand, torch.randperm
    calls = []

    def checked(real):
        def draw(*args, generator=None, device=None, **kwargs):
            if generator is not None:
                where = torch.device(device) if device is not None else torch.device("cpu")
                calls.append((generator.device.type, where.type))
                if where.type != generator.device.type:
                    raise RuntimeError(f"Expected a '{where.type}' device type for generator but found "
                                       f"'{generator.device.type}'")
                if isinstance(generator, _FakeCudaGenerator):
                    return real(*args, generator=generator.inner, **kwargs)  # pretend: values "on cuda"
            return real(*args, generator=generator, device=device, **kwargs)

        return draw

    monkeypatch.setattr(torch, "rand", checked(real_rand))
    monkeypatch.setattr(torch, "randperm", checked(real_randperm))
    return calls


def test_samplers_draw_on_the_generators_device(cuda_generator_rule):
    prob = torch.full((6, 6), 0.5)
    pts = sample_points(prob, generator=_FakeCudaGenerator(0))
    assert pts.device == prob.device and pts.shape[1] == 2
    pts = random_points(6, 10, generator=_FakeCudaGenerator(0))
    assert pts.shape == (10, 2) and pts.device.type == "cpu"
    # CPU generators obey the same rule, and a CUDA-side generator gives the CPU stream's values
    assert torch.equal(sample_points(prob, torch.Generator().manual_seed(1)),
                       sample_points(prob, _FakeCudaGenerator(1)))
    assert cuda_generator_rule and all(g == d for g, d in cuda_generator_rule)
    # the rule fixture does catch the bug it is for: randperm with a CUDA generator and no device=
    with pytest.raises(RuntimeError, match="device type for generator"):
        torch.randperm(36, generator=_FakeCudaGenerator(0))


def test_image_seeds_are_stable_and_order_free():
    from sam_mi.modeling.seeding import image_key, image_seed, sampling_generator

    key = image_key({"file_name": "/data/ADEChallengeData2016/images/validation/ADE_val_00000001.jpg"})
    assert key == "ADE_val_00000001.jpg" == image_key({"file_name": "other_root/ADE_val_00000001.jpg"})
    digest = hashlib.sha256(b"7\0ADE_val_00000001.jpg").digest()
    assert image_seed(7, key) == int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
    assert image_seed(7, key) != image_seed(8, key) != image_seed(8, "ADE_val_00000002.jpg")
    # another interpreter (string hashing salted differently) derives the same seed
    code = "from sam_mi.modeling.seeding import image_seed; print(image_seed(7, 'ADE_val_00000001.jpg'))"
    env = dict(os.environ, PYTHONHASHSEED="random", PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) == image_seed(7, key)
    # without a file name: a content hash
    img = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert image_key({"image": img}) == image_key({"image": img.clone()}) != image_key({"image": img.flip(-1)})
    with pytest.raises(ValueError, match="file_name"):
        image_key({})
    # per-image streams: an image's points do not depend on which images a process saw before it
    probs = {f"img_{i}.png": torch.rand(8, 8, generator=torch.Generator().manual_seed(i)) for i in range(6)}

    def evaluate(names):
        return {n: sample_points(probs[n], sampling_generator(image_seed(0, n))) for n in names}

    one_process = evaluate(list(probs))
    shards = evaluate(list(probs)[0::2]) | evaluate(list(probs)[1::2][::-1])
    assert all(torch.equal(one_process[n], shards[n]) for n in probs)
    assert not torch.equal(one_process["img_0.png"], one_process["img_1.png"])


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
