"""tools/eval_all.py end to end: the tiny model over synthetic stand-ins in the datasets' real on-disk formats.

Stand-ins (2 images each): Kvasir-Instrument (MESS binary), PST900 (MESS multi-class with background 0),
ADE20K-847 (uint16 TIFF labels, 65535 = ignore) and VOC-20b (21 classes, 59 prompts).  PC-59 and BDD100K
are left unprepared to check the skip lines.
"""
import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "tiny", "sam_mi_tiny_baseline.yaml")
KVASIR, PST900 = "kvasir_instrument_sem_seg_test", "pst900_sem_seg_test"
ADE847, VOCB = "ade20k_full_sem_seg_freq_val_all", "voc_2012_test_background_sem_seg"
PREPARED = [ADE847, VOCB, KVASIR, PST900]
MISSING = {"context_59_test_sem_seg": "prepare_pascal_context_59.py",
           "bdd100k_sem_seg_val": "python -m mess.prepare_datasets.prepare_bdd100k"}


def _save(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def make_stand_ins(root: str, n: int = 2, h: int = 40, w: int = 56) -> None:
    """Files exactly where the registrations (ours and mess-benchmark's) look for them."""
    rng = np.random.default_rng(0)
    for i in range(n):
        image = lambda: rng.integers(0, 255, (h, w, 3), dtype=np.uint8)  # noqa: E731
        _save(f"{root}/kvasir-instrument/images_detectron2/test/{i}.png", image())
        gt = rng.integers(0, 2, (h, w)).astype(np.uint8)
        gt[:2] = 255
        _save(f"{root}/kvasir-instrument/annotations_detectron2/test/{i}.png", gt)
        _save(f"{root}/PST900_RGBT_Dataset/test/thermal/{i}.png", image())
        _save(f"{root}/PST900_RGBT_Dataset/test/labels/{i}.png", rng.integers(0, 5, (h, w)).astype(np.uint8))
        _save(f"{root}/ADE20K_2021_17_01/images_detectron2/validation/{i}.jpg", image())
        gt16 = rng.integers(0, 847, (h, w)).astype(np.uint16)
        gt16[:, :5] = 65535
        _save(f"{root}/ADE20K_2021_17_01/annotations_detectron2/validation/{i}.tif", gt16)
        _save(f"{root}/VOCdevkit/VOC2012/JPEGImages/{i}.jpg", image())
        gt = rng.integers(0, 21, (h, w)).astype(np.uint8)
        gt[-3:] = 255
        _save(f"{root}/VOCdevkit/VOC2012/annotations_detectron2_bg/val/{i}.png", gt)


def _load_tool():
    spec = importlib.util.spec_from_file_location("eval_all", os.path.join(REPO, "tools", "eval_all.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(root, out, suite):
    return ["--config-file", CONFIG, "--dataset-root", root, "--output", out, "--suite", suite, "--no-progress"]


def run_in_process(root, out, suite, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", root)  # restored after the test (main() sets it too)
    tool = _load_tool()
    return tool.main(tool.get_parser().parse_args(_args(root, out, suite)))


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("datasets"))
    out = str(tmp_path_factory.mktemp("eval"))
    make_stand_ins(root)
    mp = pytest.MonkeyPatch()
    try:
        outcome = run_in_process(root, out, ",".join(PREPARED[:2] + ["context_59_test_sem_seg"] + PREPARED[2:]
                                                     + ["bdd100k_sem_seg_val"]), mp)
    finally:
        mp.undo()
    return root, out, outcome


def _csv(out):
    with open(os.path.join(out, "results.csv")) as f:
        return {r["name"]: r for r in csv.DictReader(f)}


def test_suite_writes_report_with_the_evaluators_numbers(suite_run):
    _, out, outcome = suite_run
    assert outcome.evaluated == PREPARED and not outcome.failed
    rows = _csv(out)
    md = open(os.path.join(out, "report.md")).read()
    for name in PREPARED:
        # the evaluator's own record of its metrics (detectron2 and MESS evaluators both write it)
        own = torch.load(os.path.join(out, name, "sem_seg_evaluation.pth"), weights_only=False)
        stored = json.load(open(os.path.join(out, name, "results.json")))
        assert stored["metrics"]["mIoU"] == pytest.approx(own["mIoU"], abs=1e-12)
        for metric in ("mIoU", "fwIoU", "mACC", "pACC"):
            assert float(rows[name][metric]) == pytest.approx(own[metric], abs=1e-12), (name, metric)
        assert f"{own['mIoU']:.2f}" in md
    # MESS evaluator for MESS names: CoI-mIoU only there
    assert rows[KVASIR]["CoI-mIoU"] != "" and rows[ADE847]["CoI-mIoU"] == ""
    assert json.load(open(os.path.join(out, KVASIR, "results.json")))["evaluator"] == "mess_sem_seg"
    mess_mean = np.mean([float(rows[n]["mIoU"]) for n in (KVASIR, PST900)])
    assert float(rows["MESS mean (2/22)"]["mIoU"]) == pytest.approx(mess_mean)
    assert float(rows["Medical Sciences"]["mIoU"]) == pytest.approx(float(rows[KVASIR]["mIoU"]))
    assert float(rows[KVASIR]["paper_SAM-MI_mIoU"]) == 49.44
    assert "## Table 1" in md and "## Table 2" in md
    summary = json.load(open(os.path.join(out, "results.json")))
    assert summary["summary"]["mess_mean"]["metrics"]["mIoU"] == pytest.approx(mess_mean)


def _decode_predictions(out, name):
    """sem_seg_predictions.json (RLE per class) -> {file_name: label map}."""
    maps = {}
    for p in json.load(open(os.path.join(out, name, "sem_seg_predictions.json"))):
        rle = dict(p["segmentation"], counts=p["segmentation"]["counts"].encode())
        mask = mask_util.decode(rle).astype(bool)
        label = maps.setdefault(p["file_name"], np.full(mask.shape, -1, np.int64))
        label[mask] = p["category_id"]
    return maps


def test_ade847_tiff_ignore_65535_recomputed_independently(suite_run):
    root, out, _ = suite_run
    conf = np.zeros((847, 847), np.int64)
    for file_name, pred in _decode_predictions(out, ADE847).items():
        stem = os.path.splitext(os.path.basename(file_name))[0]
        gt = np.asarray(Image.open(f"{root}/ADE20K_2021_17_01/annotations_detectron2/validation/{stem}.tif"),
                        dtype=np.int64)
        assert (gt == 65535).any() and (pred >= 0).all()
        valid = gt != 65535
        np.add.at(conf, (pred[valid], gt[valid]), 1)
    tp, pos_gt, pos_pred = np.diag(conf), conf.sum(0), conf.sum(1)
    valid = pos_gt > 0
    miou = 100 * np.mean(tp[valid] / (pos_gt + pos_pred - tp)[valid])
    assert float(_csv(out)[ADE847]["mIoU"]) == pytest.approx(miou)


def test_vocb_predictions_are_mapped_to_background(suite_run):
    _, out, _ = suite_run
    preds = _decode_predictions(out, VOCB)
    assert preds and max(p.max() for p in preds.values()) <= 20  # 59 prompts, 21 scored classes


def test_missing_datasets_are_skipped_with_their_preparation_command(suite_run, capsys):
    _, out, outcome = suite_run
    assert set(outcome.skipped) == set(MISSING)
    md = open(os.path.join(out, "report.md")).read()
    for name, command in MISSING.items():
        assert command in outcome.skipped[name]
        assert f"`{name}` skipped" in md and command in md
    assert not os.path.exists(os.path.join(out, "context_59_test_sem_seg", "results.json"))


def test_rerun_evaluates_only_unfinished_datasets(suite_run, monkeypatch):
    root, out, _ = suite_run
    mtimes = {n: os.stat(os.path.join(out, n, "results.json")).st_mtime_ns for n in PREPARED}
    os.remove(os.path.join(out, PST900, "results.json"))  # as if the run had died during PST900
    outcome = run_in_process(root, out, ",".join(PREPARED), monkeypatch)
    assert outcome.evaluated == [PST900]
    for name in PREPARED:
        if name != PST900:
            assert os.stat(os.path.join(out, name, "results.json")).st_mtime_ns == mtimes[name]
    assert set(outcome.results) == set(PREPARED)
    assert len([r for r in _csv(out).values() if r["level"] == "dataset"]) == len(PREPARED)


def test_killed_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    root, out = str(tmp_path / "datasets"), str(tmp_path / "eval")
    make_stand_ins(root, n=3)
    suite = ",".join([KVASIR, PST900, ADE847])
    env = dict(os.environ, DETECTRON2_DATASETS=root)
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "tools", "eval_all.py"), *_args(root, out, suite)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = os.path.join(out, KVASIR, "results.json")
    deadline = time.time() + 240
    while not os.path.exists(first) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.exists(first), "the suite did not finish its first dataset"
    finished = {n: os.stat(os.path.join(out, n, "results.json")).st_mtime_ns
                for n in (KVASIR, PST900, ADE847) if os.path.exists(os.path.join(out, n, "results.json"))}
    assert len(finished) < 3, "killed too late to test resuming"
    outcome = run_in_process(root, out, suite, monkeypatch)
    assert outcome.evaluated == [n for n in (KVASIR, PST900, ADE847) if n not in finished]
    for name, mtime in finished.items():
        assert os.stat(os.path.join(out, name, "results.json")).st_mtime_ns == mtime
    assert set(outcome.results) == {KVASIR, PST900, ADE847}


def test_other_weights_in_the_same_folder_are_evaluated_again(tmp_path, monkeypatch):
    """The issue's case: a new model_final.pth at the same path must not report the old file's numbers."""
    import hashlib

    from detectron2.modeling import build_model

    from conftest import tiny_cfg

    root, out = str(tmp_path / "datasets"), str(tmp_path / "eval")
    make_stand_ins(root)
    weights = tmp_path / "model_final.pth"
    model = build_model(tiny_cfg("configs/tiny/sam_mi_tiny_baseline.yaml"))
    torch.save({"model": model.state_dict()}, weights)

    def run():
        monkeypatch.setenv("DETECTRON2_DATASETS", root)
        tool = _load_tool()
        return tool.main(tool.get_parser().parse_args(_args(root, out, KVASIR) + ["--weights", str(weights)]))

    assert run().evaluated == [KVASIR]
    first = json.load(open(os.path.join(out, KVASIR, "results.json")))
    torch.manual_seed(1)
    state = {k: v + torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({"model": state}, weights)
    assert run().evaluated == [KVASIR]  # re-evaluated, not reused
    second = json.load(open(os.path.join(out, KVASIR, "results.json")))
    digest = second["provenance"]["weights"]["MODEL.WEIGHTS"]["sha256"]
    assert digest == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert digest != first["provenance"]["weights"]["MODEL.WEIGHTS"]["sha256"]
    assert second["metrics"] != first["metrics"]
    assert run().evaluated == []  # same file again: reused


def test_table6_counts_of_a_sam_mi_model(tmp_path, monkeypatch):
    root, out = str(tmp_path / "datasets"), str(tmp_path / "eval")
    make_stand_ins(root)
    monkeypatch.setenv("DETECTRON2_DATASETS", root)
    tool = _load_tool()
    config = os.path.join(REPO, "configs", "tiny", "sam_mi_tiny_stage2.yaml")
    argv = ["--config-file", config, "--dataset-root", root, "--output", out, "--suite", KVASIR, "--no-progress",
            "--no-protocol", "MODEL.WEIGHTS", ""]  # one view per image: fast
    outcome = tool.main(tool.get_parser().parse_args(argv))
    stats = json.load(open(os.path.join(out, KVASIR, "results.json")))["sam_mi"]
    assert outcome.stats[KVASIR] == stats and stats["images"] == 2
    assert stats["points_per_image"] > 0 and stats["sam_masks_per_image"] > 0 and stats["injected_image_fraction"] > 0
    row = _csv(out)[KVASIR]
    for column in ("points_per_image", "sam_masks_per_image", "injected_masks_per_image"):
        assert float(row[column]) == pytest.approx(stats[column])
    md = open(os.path.join(out, "report.md")).read()
    assert f"| `{KVASIR}` | Kvasir-Instrument | {stats['points_per_image']:.1f} |" in md
