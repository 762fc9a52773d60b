"""The demo's pieces (sam_mi/engine/demo.py): its configs, its seed summary, its SAM caption, its seeds option."""
import os
import subprocess
import sys

import numpy as np
import pytest

from sam_mi.engine.demo import DEMO_ROWS, demo_configs, sam_caption, seed_summary_table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_configs_wire_the_stages_and_carry_the_seed(tmp_path):
    out = str(tmp_path)
    cfgs = demo_configs(out, "sam.pth", {"warmup": 7, "stage1": 5, "stage2": 6}, seed=3)
    assert set(cfgs) == {"warmup", "stage1", "baseline", "stage2", "oracle", "no_masks"}
    assert {c.SEED for c in cfgs.values()} == {3}
    assert cfgs["warmup"].SOLVER.MAX_ITER == 7 and cfgs["stage1"].SOLVER.MAX_ITER == 5
    assert {cfgs[k].SOLVER.MAX_ITER for k in ("baseline", "stage2", "oracle", "no_masks")} == {6}  # same schedule
    clip = os.path.join(out, "clip_warmup", "clip.pth")
    stage1 = os.path.join(out, "stage1", "model_final.pth")
    assert cfgs["stage1"].MODEL.WEIGHTS == clip and cfgs["baseline"].MODEL.WEIGHTS == clip
    assert cfgs["stage2"].MODEL.WEIGHTS == stage1 and cfgs["no_masks"].MODEL.WEIGHTS == stage1
    assert cfgs["stage2"].MODEL.SAM_MI.SAM.CHECKPOINT == "sam.pth"
    assert cfgs["no_masks"].MODEL.SAM_MI.SAM.PRED_IOU_THRESH > 1e8  # no mask passes: DMI never runs
    assert cfgs["oracle"].MODEL.SAM_MI.SAM.ORACLE_MASKS and not cfgs["oracle"].MODEL.SAM_MI.SMAGG.ENABLED
    assert len({c.OUTPUT_DIR for c in cfgs.values()}) == len(cfgs)
    assert {key for key, _ in DEMO_ROWS.values()} == set(cfgs) - {"warmup", "stage1"}
    without = demo_configs(out, "", {"warmup": 0})
    assert "warmup" not in without and without["baseline"].MODEL.WEIGHTS == ""


def test_seed_summary_is_mean_and_spread_of_scores_and_of_paired_differences():
    scores = {"CAT-Seg baseline": [(50.0, 20.0), (60.0, 26.0), (55.0, 23.0)],
              "SAM-MI, TSPP": [(54.0, 22.0), (63.0, 27.0), (60.0, 25.0)]}
    per_seed = {s: {n: {"mIoU": v[s][0], "BIoU": v[s][1]} for n, v in scores.items()} for s in range(3)}
    table = seed_summary_table(per_seed)
    line = next(row for row in table.splitlines() if row.startswith("| SAM-MI, TSPP"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    m = np.array([54.0, 63.0, 60.0])
    d = m - np.array([50.0, 60.0, 55.0])
    assert cells[1] == f"{m.mean():.1f} ± {m.std(ddof=1):.1f}"
    assert cells[2] == f"{d.mean():.1f} ± {d.std(ddof=1):.1f}" == "4.0 ± 1.0"
    assert cells[4] == "1.7 ± 0.6"  # boundary IoU differences 2, 1, 2


def test_sam_caption_states_quality_and_the_swapped_control():
    report = {"quality": {"best_iou": 0.31}, "swapped_quality": {"best_iou": 0.2},
              "amg": [{"pred_iou_thresh": 0.88, "stability_score_thresh": 0.95, "masks_per_image": 0.0},
                      {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "masks_per_image": 91.0}],
              "settings": {"schedule": {"iters": 2000}}, "training": {"seconds": 67.0}, "reused": True}
    text = sam_caption(report)
    assert "2000 iterations, 67 s, reused" in text and "0.31 (0.20 with the prompt's x and y swapped)" in text
    assert "91 masks per image" in text
    assert "random tiny SAM" in sam_caption(None) and "ckpt.pth" in sam_caption(None, "ckpt.pth")


def test_demo_with_several_seeds_writes_each_and_their_summary(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools/demo.py"), "--output-dir", str(tmp_path), "--seeds", "0", "1",
         "--warmup-iters", "0", "--stage1-iters", "2", "--stage2-iters", "2", "--num-train", "6", "--num-val", "2",
         "--train-sam-iters", "0"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = (tmp_path / "results.md").read_text()
    assert "## seed 0" in text and "## seed 1" in text and "## over seeds 0, 1" in text
    assert "mIoU - baseline" in text
    for seed in (0, 1):
        assert (tmp_path / f"seed_{seed}" / "stage2" / "model_final.pth").exists()
        assert f"seed {seed}" in (tmp_path / f"seed_{seed}" / "log_stage2.txt").read_text()
    assert not (tmp_path / "seed_0" / "clip_warmup").exists()
