"""The tiny SAM's box prompts and its train-or-reuse run (sam_mi/engine/sam_pretraining.py, tiny_sam_run.py)."""
import json
import os

import pytest
import torch

from sam_mi.engine.sam_pretraining import TinySAMSchedule, decode_points, jittered_boxes, train_tiny_sam
from sam_mi.engine.tiny_sam_run import train_or_reuse_tiny_sam
from sam_mi.modeling.sam import build_tiny_sam

from test_tiny_sam import _fixed_layout_set


def test_jittered_boxes_are_the_regions_boxes_with_bounded_noise():
    target = torch.zeros(2, 10, 20, dtype=torch.bool)
    target[0, 2:5, 3:9] = True  # rows 2-4, columns 3-8
    target[1, 0:10, 19] = True
    g = torch.Generator().manual_seed(0)
    exact = jittered_boxes(target, g, noise=0.0)
    torch.testing.assert_close(exact, torch.tensor([[3 / 20, 2 / 10, 9 / 20, 5 / 10], [19 / 20, 0.0, 1.0, 1.0]]))
    noisy = jittered_boxes(target.repeat(32, 1, 1), g, noise=0.1, max_px=1.0)  # at most 1 px of noise
    scale = torch.tensor([20.0, 10.0, 20.0, 10.0])
    moved = (noisy * scale - exact.repeat(32, 1) * scale).abs()
    inside = (noisy >= 0) & (noisy <= 1)
    assert bool(inside.all()) and float(moved.max()) <= 1.0 + 1e-5 and float(moved.max()) > 0


def test_box_rows_decode_as_box_prompts_and_point_rows_as_points():
    torch.manual_seed(0)
    sam = build_tiny_sam(128).eval()
    emb = sam.image_encoder(torch.zeros(1, 3, 128, 128))
    coords = torch.tensor([[[30.0, 40.0]], [[90.0, 20.0]]])
    labels = torch.ones(2, 1, dtype=torch.int)
    boxes = torch.tensor([[10.0, 10.0, 60.0, 70.0], [float("nan")] * 4])
    with torch.no_grad():
        mixed, mixed_iou = decode_points(sam, emb, coords, labels, boxes=boxes)
        points, _ = decode_points(sam, emb, coords, labels)
        sparse, dense = sam.prompt_encoder(points=None, boxes=boxes[:1], masks=None)
        box_only, _ = sam.mask_decoder(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense, True)
    torch.testing.assert_close(mixed[1], points[1])
    torch.testing.assert_close(mixed[0], box_only[0])
    assert not torch.allclose(mixed[0], points[0]) and mixed_iou.shape == (2, 3)


def test_box_prompt_training_runs_and_validates_its_schedule():
    sam, summary = train_tiny_sam(_fixed_layout_set(2, 1), TinySAMSchedule(iters=2, prompts_per_image=4,
                                                                          loss_points=16, box_fraction=1.0))
    assert summary["final_mask_loss"] > 0
    with pytest.raises(ValueError, match="box_fraction"):
        TinySAMSchedule(box_fraction=1.5)


def test_train_or_reuse_reports_swapped_control_and_reuses(synthetic_root, tmp_path):
    out = str(tmp_path / "sam.pth")
    schedule = TinySAMSchedule(iters=4, prompts_per_image=4, loss_points=16, min_region_area=100)
    seen = []
    report = train_or_reuse_tiny_sam("synthetic_stuff_train_sem_seg", "synthetic_stuff_val_sem_seg", out,
                                     schedule, eval_period=2, log=seen.append)
    assert not report["reused"] and os.path.isfile(out)
    assert {"quality", "swapped_quality", "amg", "training", "settings"} <= set(report)
    assert sum("validation after" in line for line in seen) == 2  # the on_period callback, every 2 iterations
    assert json.load(open(str(tmp_path / "sam.json")))["swapped_quality"] == report["swapped_quality"]
    again = train_or_reuse_tiny_sam("synthetic_stuff_train_sem_seg", "synthetic_stuff_val_sem_seg", out,
                                    schedule, reuse=True, log=None)
    assert again["reused"] and again["quality"] == report["quality"]
    # other settings: trained again, not reused
    other = TinySAMSchedule(iters=5, prompts_per_image=4, loss_points=16, min_region_area=100)
    assert not train_or_reuse_tiny_sam("synthetic_stuff_train_sem_seg", "synthetic_stuff_val_sem_seg", out,
                                       other, reuse=True, log=None)["reused"]
    with pytest.raises(ValueError, match="not registered"):
        train_or_reuse_tiny_sam("no_such_split", "synthetic_stuff_val_sem_seg", out, schedule, log=None)
