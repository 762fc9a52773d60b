"""Pre-training the tiny SAM with SAM's recipe (sam_mi/engine): regions, prompts, losses, checkpoint, geometry."""

import json
import os

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from sam_mi.data.synthetic import _TEXTURES, SYNTHETIC_STUFF_CLASSES
from sam_mi.engine.sam_losses import dice_loss, mask_iou, point_logits, sam_loss, sigmoid_focal_loss
from sam_mi.engine.sam_pretraining import (
    RegionImage,
    TinySAMSchedule,
    load_region_images,
    region_map,
    sample_region_points,
    save_sam_checkpoint,
    train_tiny_sam,
)
from sam_mi.engine.sam_quality import amg_masks_per_image, point_prompt_quality
from sam_mi.modeling.sam import build_tiny_sam, load_checkpoint
from sam_mi.modeling.sam.point_decoder import logits_to_out_size

S = 128


def _fixed_layout_set(n: int, seed: int):
    """Images sharing one asymmetric layout (background, a band at the left, a disk at the top right),
    each region with a random class texture: where a region lies is a function of the prompt's position."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float64)
    reg = np.ones((S, S), np.int64)
    reg[:, 13:38] = 2
    reg[((yy - 32) ** 2 + (xx - 96) ** 2) < 20**2] = 3
    out = []
    for _ in range(n):
        classes = rng.choice(len(SYNTHETIC_STUFF_CLASSES), 3, replace=False)
        image = np.zeros((S, S, 3))
        for r, c in enumerate(classes, 1):
            image[reg == r] = _TEXTURES[SYNTHETIC_STUFF_CLASSES[c]](rng, yy, xx)[reg == r]
        image = np.clip(image, 0, 255).astype(np.uint8).transpose(2, 0, 1).copy()
        out.append(RegionImage(torch.from_numpy(image), torch.from_numpy(reg.copy()), 3))
    return out


@pytest.fixture(scope="session")
def trained_tiny_sam():
    """The tiny SAM trained once (400 iterations, ~15 s on one core) on the fixed-layout set.

    One thread: the model is too small for a second one to pay, and the figures below are for one thread.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sam, summary = train_tiny_sam(_fixed_layout_set(16, 0), TinySAMSchedule(iters=400, seed=0))
    finally:
        torch.set_num_threads(threads)
    return sam, summary, _fixed_layout_set(4, 1)


def test_region_map_splits_classes_into_components():
    label = np.array(
        [
            [0, 0, 1, 1],
            [2, 2, 1, 255],
            [0, 0, 2, 2],
            [0, 0, 2, 0],
        ],
        dtype=np.uint8,
    )
    ids, n = region_map(label)
    # class 0: two components (top-left pair, bottom-left block) + one pixel at (3,3); class 1: one; class 2: two
    assert n == 6
    assert ids[1, 3] == 0  # ignore
    for cls in (0, 1, 2):
        for r in np.unique(ids[label == cls]):
            assert r > 0 and set(np.unique(label[ids == r])) == {cls}
    assert ids[0, 0] == ids[0, 1] != ids[2, 0] == ids[3, 1]
    ids_big, n_big = region_map(label, min_area=2)
    assert n_big == 5 and ids_big[3, 3] == 0  # the single pixel is dropped
    with pytest.raises(ValueError, match=r"\[H,W\]"):
        region_map(label[None])


def test_sampled_points_lie_inside_their_region():
    regions = torch.zeros(20, 30, dtype=torch.long)
    regions[2:6, 20:29] = 1
    regions[10:19, 1:4] = 2
    regions[7, 7] = 3  # a one-pixel region is still reachable
    g = torch.Generator().manual_seed(0)
    points, ids = sample_region_points(regions, 3, 600, g)
    cols = (points[:, 0] * 30).long()
    rows = (points[:, 1] * 20).long()
    assert torch.equal(regions[rows, cols], ids)
    assert set(ids.tolist()) == {1, 2, 3}
    # pixel centres, as `PointPromptedSAM.generate` expects
    assert torch.allclose(points[:, 0] * 30 % 1, torch.full_like(points[:, 0], 0.5))


def test_losses_follow_their_definitions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, 40, generator=g) * 3
    targets = (torch.rand(5, 3, 40, generator=g) > 0.6).float()
    ref = torchvision.ops.sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="none").mean(-1)
    assert torch.allclose(sigmoid_focal_loss(logits, targets), ref, atol=1e-6)
    p = logits.sigmoid()
    dice = 1 - (2 * (p * targets).sum(-1) + 1) / (p.sum(-1) + targets.sum(-1) + 1)
    assert torch.allclose(dice_loss(logits, targets), dice, atol=1e-6)
    iou_pred, actual = torch.rand(5, 3, generator=g), torch.rand(5, 3, generator=g)
    loss, parts = sam_loss(logits, targets, iou_pred, actual)
    per = 20 * ref + dice
    assert torch.equal(parts["best"], per.argmin(1))
    assert torch.allclose(loss, per.min(1)[0].mean() + ((iou_pred - actual) ** 2).mean(), atol=1e-6)
    a = torch.zeros(2, 4, 4, dtype=torch.bool)
    a[0, :2] = True
    b = torch.zeros(4, 4, dtype=torch.bool)
    b[:1] = True
    assert torch.allclose(mask_iou(a, b), torch.tensor([0.5, 0.0]))


def test_point_logits_match_the_inference_resampling():
    g = torch.Generator().manual_seed(1)
    low = torch.randn(2, 32, 32, generator=g)
    h, w, h_in, w_in = 24, 30, 102, 128  # an image 24x30 resized to 102x128 in a 128x128 frame
    full = logits_to_out_size(low, (h_in, w_in), (S, S), (h, w))
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    centres = torch.stack([(xs.flatten() + 0.5) / w, (ys.flatten() + 0.5) / h], -1)
    at_points = point_logits(low, centres[None].expand(2, -1, -1), (h_in, w_in), (S, S))
    assert torch.allclose(at_points, full.flatten(1), atol=1e-5)


def test_load_region_images_reads_records_and_names_bad_files(tmp_path):
    image = np.zeros((8, 10, 3), np.uint8)
    label = np.zeros((8, 10), np.uint8)
    label[:, 5:] = 3
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(label).save(tmp_path / "a_gt.png")
    rec = {"file_name": str(tmp_path / "a.png"), "sem_seg_file_name": str(tmp_path / "a_gt.png")}
    (sample,) = load_region_images([rec], min_area=1)
    assert sample.num_regions == 2 and sample.image.shape == (3, 8, 10) and sample.regions.shape == (8, 10)
    with pytest.raises(FileNotFoundError, match="sem_seg_file_name"):
        load_region_images([{"file_name": rec["file_name"], "sem_seg_file_name": str(tmp_path / "none.png")}])
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(tmp_path / "bad_gt.png")
    with pytest.raises(ValueError, match="bad_gt.png"):
        load_region_images([{"file_name": rec["file_name"], "sem_seg_file_name": str(tmp_path / "bad_gt.png")}])


def test_training_is_seeded_and_deterministic():
    data = _fixed_layout_set(2, 3)
    schedule = TinySAMSchedule(iters=3, prompts_per_image=4, loss_points=32, seed=7)
    a, _ = train_tiny_sam(data, schedule)
    b, _ = train_tiny_sam(data, schedule)
    c, _ = train_tiny_sam(data, TinySAMSchedule(iters=3, prompts_per_image=4, loss_points=32, seed=8))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_checkpoint_loads_through_segment_anything(tmp_path, trained_tiny_sam):
    sam, summary, _ = trained_tiny_sam
    path = str(tmp_path / "tiny_sam" / "sam_tiny.pth")
    save_sam_checkpoint(sam, path, {"training": summary})
    assert sorted(os.listdir(tmp_path / "tiny_sam")) == ["sam_tiny.json", "sam_tiny.pth"]  # no temp files left
    assert json.loads(open(str(tmp_path / "tiny_sam" / "sam_tiny.json")).read())["training"]["seconds"] > 0
    # segment-anything's own loader (build_sam._build_sam): torch.load of the file, strict load_state_dict
    with open(path, "rb") as f:
        state = torch.load(f)
    official = build_tiny_sam(S)
    official.load_state_dict(state)
    ours = build_tiny_sam(S)
    load_checkpoint(ours, path, "tiny")
    for key, value in sam.state_dict().items():
        assert torch.equal(official.state_dict()[key], value) and torch.equal(ours.state_dict()[key], value)


def test_masks_land_on_the_prompted_region_and_a_transpose_is_caught(trained_tiny_sam):
    sam, _, val = trained_tiny_sam
    right = point_prompt_quality(sam, val, S, seed=0)
    swapped = point_prompt_quality(sam, val, S, seed=0, swap_xy=True)
    chance = float(np.mean([(v.regions == r).float().mean() for v in val for r in range(1, 4)]))
    assert right["num_prompts"] == 12
    assert right["best_iou"] > chance + 0.15, (right, chance)
    # the band sits left, the disk top-right: a transposed prompt lands in another region
    assert swapped["top_score_iou"] < 0.6 * right["top_score_iou"], (right, swapped)


def test_amg_count_runs_through_the_inference_path(trained_tiny_sam):
    sam, _, val = trained_tiny_sam
    strict = amg_masks_per_image(sam, val[:1], S)
    everything = amg_masks_per_image(sam, val[:1], S, pred_iou_thresh=-1.0, stability_score_thresh=0.0)
    assert 0 <= strict <= everything and everything >= 1


def test_sam_mi_with_the_trained_sam_injects_several_masks(trained_tiny_sam, tmp_path):
    """The trained checkpoint, loaded by SAM-MI through MODEL.SAM_MI.SAM.CHECKPOINT like SAM-H, gives several
    distinct masks per image (prompts at different places select different regions), where the random tiny SAM
    gives about one (its masks ignore the prompt and NMS merges them): the injection carries information."""
    from detectron2.modeling import build_model

    from conftest import tiny_cfg

    sam, _, val = trained_tiny_sam
    path = str(tmp_path / "sam_tiny.pth")
    save_sam_checkpoint(sam, path)
    counts = {}
    for name, checkpoint in (("random", ""), ("trained", path)):
        torch.manual_seed(0)
        cfg = tiny_cfg(opts=["MODEL.SAM_MI.SAM.CHECKPOINT", checkpoint, "MODEL.SAM_MI.TSPP.SAMPLING", "grid"])
        model = build_model(cfg).eval()
        outs = model([{"image": v.image, "file_name": f"fixed_{i}"} for i, v in enumerate(val)])
        counts[name] = [o["sam_mi"]["num_sam_masks"] for o in outs]
        assert all(o["sam_mi"]["num_points"] == 16 * 16 for o in outs)
    assert min(counts["trained"]) >= 3, counts
    assert np.mean(counts["trained"]) >= 2 * np.mean(counts["random"]), counts
