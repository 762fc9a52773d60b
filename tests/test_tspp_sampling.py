"""TSPP's point sampling (Sec. 3.2, Eq. 2): the grid, weighted and random draws, their generators' devices and
the per-image seeds that make test-time sampling repeat across runs and processes."""
import hashlib
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from segment_anything.utils.amg import build_point_grid

from conftest import REPO

from sam_mi.modeling.tspp import grid_points, random_points, sample_points


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
