"""tools/benchmark_latency.py runs on the CPU and reports per-stage times, counts and the two ratios."""
import json
import os
import subprocess
import sys

from conftest import REPO


def test_latency_benchmark_reports_stages_and_ratios(tmp_path):
    out = tmp_path / "latency.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools/benchmark_latency.py"), "--config-file",
         os.path.join(REPO, "configs/tiny/sam_mi_tiny_stage2.yaml"), "--iters", "1", "--warmup", "0",
         "--num-images", "1", "--image-size", "128", "160", "--json", str(out), "--permissive-filters",
         "MODEL.WEIGHTS", ""],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"learned", "grid", "random"}
    grid, learned, rand = (report["results"][m] for m in ("grid", "learned", "random"))
    for r in (grid, learned, rand):
        stages = ["clip", "tspp", "sam_encoder", "sam_decoding", "smagg", "cost_head"]
        assert all(r[f"{k}_ms"] > 0 for k in stages + ["total"])
        assert r["total_ms"] >= sum(r[f"{k}_ms"] for k in stages) * 0.99 and r["other_ms"] >= -0.01 * r["total_ms"]
    assert grid["points_per_image"] == 16 * 16  # the tiny grid: every point
    assert rand["points_per_image"] == 64
    assert 0 < learned["points_per_image"] < 256  # calibrated to --expected-points (41) on random weights
    assert all(r["sam_masks_per_image"] > 0 for r in (grid, learned, rand))  # masks flow: SMAgg / DMI timed
    assert report["ratios"]["grid_over_learned"] == grid["total_ms"] / learned["total_ms"]
    assert "learned_over_encoders" in report["ratios"] and "grid_over_learned" in proc.stdout


def test_stage_spans_come_from_the_models_forward(synthetic_root):
    """The benchmark's stages are spans the model opens itself: a plain forward under a StageTimer fills them,
    and the same spans appear in a torch.profiler trace."""
    import torch
    from detectron2.modeling import build_model

    from conftest import tiny_cfg
    from sam_mi.utils.stage_timer import StageTimer

    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    x = {"image": torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8), "height": 96, "width": 128}
    with StageTimer() as timer:
        model([x])
    assert {"clip", "tspp", "sam_encoder", "sam_decoding", "cost_head"} <= set(timer.seconds)
    assert timer.calls["sam_decoding"] == 1 and all(v > 0 for v in timer.seconds.values())
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model([x])
    names = {e.key for e in prof.key_averages()}
    assert {"sam_mi/clip", "sam_mi/sam_encoder", "sam_mi/cost_head"} <= names
    model([x])  # without a timer the spans cost nothing and record nothing
    assert timer.calls["sam_decoding"] == 1


def test_training_benchmark_reports_table10_columns(tmp_path):
    """tools/benchmark_training.py: baseline vs SAM-MI (fast path on / off) at the same batch, one run."""
    out = tmp_path / "train.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools/benchmark_training.py"), "--iters", "1", "--warmup", "0",
         "--batch", "2", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    base, fast, slow = (results[k] for k in ("w/o SAM (CAT-Seg)", "w/ SAM, fast path", "w/ SAM, fast path off"))
    assert base["frozen_sam_M"] == 0 < fast["frozen_sam_M"] == slow["frozen_sam_M"]
    assert fast["trainable_M"] > base["trainable_M"] and fast["total_M"] > base["total_M"] + fast["frozen_sam_M"] - 1e-6
    assert all(r["ms_per_iter"] > 0 and r["peak_memory_mb"] > 0 for r in results.values())
