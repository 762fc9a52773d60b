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
         "--num-images", "1", "--image-size", "128", "160", "--json", str(out), "MODEL.WEIGHTS", ""],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"learned", "grid", "random"}
    grid, learned, rand = (report["results"][m] for m in ("grid", "learned", "random"))
    for r in (grid, learned, rand):
        stages = ["clip", "tspp", "sam_encoder", "sam_decoding", "smagg", "dmi_aggregator"]
        assert all(r[f"{k}_ms"] > 0 for k in stages + ["total"])
        assert r["total_ms"] >= sum(r[f"{k}_ms"] for k in stages) * 0.99
    assert grid["points_per_image"] == 16 * 16  # the tiny grid: every point
    assert rand["points_per_image"] == 64
    assert 0 < learned["points_per_image"] < 256  # calibrated to --expected-points (41) on random weights
    assert report["ratios"]["grid_over_learned"] == grid["total_ms"] / learned["total_ms"]
    assert "learned_over_encoders" in report["ratios"] and "grid_over_learned" in proc.stdout
