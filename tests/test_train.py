"""Training through tools/train_net.py on the synthetic set: optimizer groups, schedules, learning, demo."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model

from conftest import REPO, tiny_cfg

from sam_mi.engine import Trainer, build_optimizer


def test_optimizer_groups_follow_multipliers(synthetic_root):
    cfg = tiny_cfg(opts=["SOLVER.CLIP_MULTIPLIER", 0.01, "SOLVER.TSPP_MULTIPLIER", 0.1])
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    lr_of = {id(g["params"][0]): g["lr"] for g in opt.param_groups}
    base = cfg.SOLVER.BASE_LR
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert id(p) not in lr_of, name  # frozen parameters (SAM, CLIP's K) are not optimised
            continue
        expected = base * (0.01 if name.startswith("clip.") else 0.1 if name.startswith("prompter.") else 1.0)
        assert lr_of[id(p)] == pytest.approx(expected), name
    assert any(n.startswith("mask_generator.") for n, _ in model.named_parameters())
    assert type(opt).__name__ == "FullModelGradientClippingOptimizer"


def test_full_model_gradient_clipping_bounds_the_update(synthetic_root):
    cfg = tiny_cfg(opts=["SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 1e-3])
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.full_like(p, 10.0)
    opt.step()
    norm = torch.norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    assert norm <= 1e-3 * 1.01


def test_poly_schedule_from_fvcore(synthetic_root):
    cfg = tiny_cfg(opts=["SOLVER.LR_SCHEDULER_NAME", "WarmupPolyLR", "SOLVER.MAX_ITER", 10])
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    sched = Trainer.build_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(opt.param_groups[0]["initial_lr"])
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def one_class_miou(dataset: str) -> float:
    """The best mIoU a constant prediction can reach on ``dataset`` (the majority class's IoU / classes)."""
    meta = MetadataCatalog.get(dataset)
    counts = np.zeros(len(meta.stuff_classes))
    for rec in DatasetCatalog.get(dataset):
        gt = read_image(rec["sem_seg_file_name"]).astype(np.int64)
        gt = gt[gt != meta.ignore_label]
        counts += np.bincount(gt, minlength=len(counts))
    present = (counts > 0).sum()
    return 100.0 * counts.max() / counts.sum() / present


def test_tiny_baseline_learns_the_synthetic_set(synthetic_root, tmp_path):
    cfg = tiny_cfg(
        "configs/tiny/sam_mi_tiny_baseline.yaml",
        opts=["SOLVER.MAX_ITER", 300, "OUTPUT_DIR", str(tmp_path)],
    )
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    trainer.train()
    results = Trainer.test(cfg, trainer.model)
    miou = results["sem_seg"]["mIoU"]
    floor = one_class_miou(cfg.DATASETS.TEST[0])
    assert miou > max(3 * floor, 25.0), (miou, floor)
    # detectron2's writers ran
    assert os.path.exists(os.path.join(tmp_path, "metrics.json"))
    with open(os.path.join(tmp_path, "metrics.json")) as f:
        assert "total_loss" in json.loads(f.readline())


def test_demo_runs_end_to_end(tmp_path):
    """The `make demo` entry point, shortened: baseline, stage 1, stage 2 -> the effect table and pictures."""
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools/demo.py"), "--output-dir", str(tmp_path),
         "--warmup-iters", "2", "--stage1-iters", "3", "--stage2-iters", "3", "--num-train", "8", "--num-val", "2",
         "--train-sam-iters", "3"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (tmp_path / "results.md").read_text()
    for row in ("CAT-Seg baseline", "SAM-MI, TSPP", "SAM-MI, grid", "SAM-MI, random-64", "SAM-MI, oracle masks",
                "SAM-MI trained with oracle masks", "SAM-MI trained without masks",
                "SAM-MI trained with oracle masks, mirrored at test"):
        assert row in table and row in proc.stdout
    assert "boundary IoU" in table
    assert os.path.getsize(tmp_path / "predictions.png") > 1000 and os.path.getsize(tmp_path / "panel.png") > 1000
    for stage in ("clip_warmup", "baseline", "stage1", "stage2", "stage2_oracle", "stage2_no_masks"):
        assert (tmp_path / stage / "model_final.pth").exists()
    # the tiny SAM trained first (its quality in the caption), then loaded by stage 2 through
    # MODEL.SAM_MI.SAM.CHECKPOINT; each training logged to its own file by the job graph
    assert (tmp_path / "tiny_sam" / "sam_tiny.pth").exists()
    assert "SAM: the tiny SAM trained with SAM's recipe (3 iterations" in table and "x and y swapped" in proc.stdout
    assert "masks injected (" + str(tmp_path / "tiny_sam" / "sam_tiny.pth") in (tmp_path / "log_stage2.txt").read_text()
    assert "tiny SAM iter 3/3" in (tmp_path / "log_tiny_sam.txt").read_text()


def test_eval_only_command_line(synthetic_root, tmp_path):
    """`tools/train_net.py --eval-only` with the evaluation protocol's flags, as the README shows."""
    env = dict(os.environ, PYTHONPATH=REPO, DETECTRON2_DATASETS=synthetic_root)
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools/train_net.py"), "--eval-only", "--config-file",
         os.path.join(REPO, "configs/tiny/sam_mi_tiny_stage2.yaml"), "MODEL.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path),
         "MODEL.SAM_MI.INFERENCE.SLIDING_WINDOW", "True", "MODEL.SAM_MI.AGGREGATOR.POOLING_SIZES", "[1,1]"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "copypaste: mIoU,fwIoU,mACC,pACC" in proc.stdout + proc.stderr
    assert os.path.exists(tmp_path / "inference" / "synthetic_stuff_val_sem_seg" / "sem_seg_evaluation.pth")


def _train_with_launch(num_gpus: int, out, synthetic_root) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO, DETECTRON2_DATASETS=synthetic_root)
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "tools/train_net.py"), "--num-gpus", str(num_gpus), "--config-file",
         os.path.join(REPO, "configs/tiny/sam_mi_tiny_stage2.yaml"), "MODEL.WEIGHTS", "", "SOLVER.MAX_ITER", "4",
         "SOLVER.IMS_PER_BATCH", "2", "OUTPUT_DIR", str(out), "DATASETS.TEST", "()", "SOLVER.LOG_PERIOD", "1",
         "MODEL.SAM_MI.SAM.PRED_IOU_THRESH", "1e9"],  # no SAM mask: DMI gets no gradient at all
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )


def test_two_process_training_equals_one_process(synthetic_root, tmp_path):
    """`--num-gpus 2` through detectron2's launch (gloo on the CPU): DDP must accept DMI parameters that get no
    gradient on a batch without SAM masks (find_unused_parameters) and CPU modules (no device_ids); and two
    processes of batch 1 train the same model as one process of batch 2 (same samples and augmentations per
    iteration: sam_mi/data/train_stream.py; gradients averaged by DDP)."""
    one = _train_with_launch(1, tmp_path / "one", synthetic_root)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _train_with_launch(2, tmp_path / "two", synthetic_root)
    assert two.returncode == 0, two.stderr[-3000:]
    losses = [[json.loads(line)["total_loss"] for line in open(out / "metrics.json") if "total_loss" in line]
              for out in (tmp_path / "one", tmp_path / "two")]
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], rel=1e-5)  # measured: ~1e-6
    a = torch.load(tmp_path / "one" / "model_final.pth", weights_only=False)["model"]
    b = torch.load(tmp_path / "two" / "model_final.pth", weights_only=False)["model"]
    assert a.keys() == b.keys()
    # AdamW normalises each gradient, so fp32 noise in near-zero gradients (all-reduce order, per-rank loss
    # normalisation) moves a few biases by up to ~lr per step: bounded, not bitwise
    worst = max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())
    assert worst < 4 * 4 * 1e-3


def test_two_process_evaluation_equals_one_process(synthetic_root, tmp_path):
    """Point sampling draws from one stream per image (seeded by SEED and the file name), so an evaluation
    split over two processes gives the same scores and counts as one process."""
    env = dict(os.environ, PYTHONPATH=REPO, DETECTRON2_DATASETS=synthetic_root)
    torch.manual_seed(0)  # one set of weights for both runs (each rank seeds its own initialisation)
    weights = tmp_path / "weights.pth"
    torch.save({"model": build_model(tiny_cfg()).state_dict()}, weights)
    lines = []
    for n in (1, 2):
        proc = subprocess.run(
            [sys.executable, os.path.join(REPO, "tools/train_net.py"), "--eval-only", "--num-gpus", str(n),
             "--config-file", os.path.join(REPO, "configs/tiny/sam_mi_tiny_stage2.yaml"), "MODEL.WEIGHTS",
             str(weights), "OUTPUT_DIR", str(tmp_path / str(n))],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines.append([l.split("copypaste: ")[1] for l in (proc.stdout + proc.stderr).splitlines()
                      if "copypaste: " in l and l.split("copypaste: ")[1][:1].isdigit()])
    assert len(lines[0]) == 2 and lines[0] == lines[1]  # mIoU, fwIoU, mACC, pACC; then the SAM-MI counts
