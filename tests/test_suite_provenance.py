"""The suite loop with a stand-in model (fast): results record what produced them and are reused only when
that matches; damaged result files are re-evaluated with a warning; Table 6 counts are collected (also
across processes); incomplete datasets are evaluated on what is there, with a warning."""
import json
import logging
import os

import pytest
import torch
from torch import nn

from sam_mi.data.synthetic import generate_synthetic_stuff
from sam_mi.evaluation import run_suite, write_report
from sam_mi.evaluation.provenance import flatten_config
from sam_mi.evaluation.sam_mi_stats import SAMMIStatsEvaluator, summarize_sam_mi_stats

from conftest import tiny_cfg

NAME = "synthetic_stuff_val_sem_seg"


class StandIn(nn.Module):
    """Predicts class ``bias`` everywhere and reports counts derived from the image's file name."""

    def __init__(self, bias: int = 0):
        super().__init__()
        self.bias, self.vocabulary = bias, None
        self.dummy = nn.Parameter(torch.zeros(1))

    def set_vocabulary(self, names):
        self.vocabulary = list(names)

    def forward(self, batched):
        outputs = []
        for x in batched:
            scores = torch.zeros(len(self.vocabulary), x["height"], x["width"])
            scores[self.bias] = 1.0
            outputs.append({"sem_seg": scores, "sam_mi": expected_counts(x["file_name"])})
        return outputs


def expected_counts(file_name: str):
    index = int(os.path.splitext(os.path.basename(file_name))[0])
    return {"num_points": 30 + index, "num_sam_masks": 10 + index, "num_masks": 5 + index, "injected": index % 2 == 0}


class Messages(logging.Handler):
    def __init__(self, *names):
        super().__init__(logging.INFO)
        self.names, self.messages = names, []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        for n in self.names:
            logging.getLogger(n).addHandler(self)
            logging.getLogger(n).setLevel(logging.INFO)
        return self

    def __exit__(self, *exc):
        for n in self.names:
            logging.getLogger(n).removeHandler(self)

    def text(self):
        return "\n".join(self.messages)


@pytest.fixture()
def root(tmp_path, monkeypatch):
    path = tmp_path / "datasets"
    generate_synthetic_stuff(path, num_train=0, num_val=4, image_size=32, seed=0)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(path))
    return path


def _cfg(tmp_path, *opts):
    weights = tmp_path / "model_final.pth"
    if not weights.exists():
        weights.write_bytes(b"weights A")
    return tiny_cfg("configs/tiny/sam_mi_tiny_baseline.yaml",
                    ["DATALOADER.NUM_WORKERS", 0, "MODEL.WEIGHTS", str(weights), *opts])


def _run(cfg, out, model=None, protocol=("MODEL.SAM_MI.INFERENCE.SLIDING_WINDOW True",)):
    with Messages("sam_mi.evaluation", "sam_mi.data.datasets.register_common") as log:
        outcome = run_suite(cfg, model or StandIn(), [NAME], str(out), progress=False, protocol=protocol)
    return outcome, log.text()


def _stored(out):
    with open(out / NAME / "results.json") as f:
        return json.load(f)


def test_result_records_its_provenance_and_table6_counts(root, tmp_path):
    cfg, out = _cfg(tmp_path), tmp_path / "eval"
    outcome, _ = _run(cfg, out)
    assert outcome.evaluated == [NAME] and not outcome.failed
    stored = _stored(out)
    prov = stored["provenance"]
    weights = prov["weights"]["MODEL.WEIGHTS"]
    assert weights["size"] == len(b"weights A") and len(weights["sha256"]) == 64
    assert prov["protocol"] == ["MODEL.SAM_MI.INFERENCE.SLIDING_WINDOW True"]
    assert prov["num_images"] == 4 and len(prov["vocabulary"]) == 7
    assert prov["config"] == flatten_config(cfg) and "OUTPUT_DIR" not in prov["config"]
    # Table 6: per-image means of what the model reported
    rows = [[c["num_points"], c["num_sam_masks"], c["num_masks"], int(c["injected"])]
            for c in map(expected_counts, [f"{i:012d}.jpg" for i in range(4)])]
    assert stored["sam_mi"] == summarize_sam_mi_stats(rows)
    assert stored["sam_mi"]["points_per_image"] == pytest.approx(31.5)
    assert stored["sam_mi"]["injected_masks_per_image"] == pytest.approx((5 + 7) / 4)  # images 0 and 2 injected
    assert outcome.stats[NAME] == stored["sam_mi"]


def test_report_shows_table6_beside_the_paper(tmp_path):
    results = {"ade20k_150_test_sem_seg": {"mIoU": 30.0}, "kvasir_instrument_sem_seg_test": {"mIoU": 50.0}}
    stats = {"ade20k_150_test_sem_seg": {"images": 2, "points_per_image": 40.5, "sam_masks_per_image": 12.0,
                                         "injected_masks_per_image": 9.25}}
    csv_path, json_path, md_path = write_report(str(tmp_path), results, stats=stats)
    md = open(md_path).read()
    assert "## Table 6" in md and "| `ade20k_150_test_sem_seg` | A-150 | 40.5 | 41 | 12.0 | 9.2 | 2 |" in md
    import csv

    rows = {r["name"]: r for r in csv.DictReader(open(csv_path))}
    assert float(rows["ade20k_150_test_sem_seg"]["points_per_image"]) == 40.5
    assert float(rows["ade20k_150_test_sem_seg"]["paper_points_per_image"]) == 41
    assert rows["kvasir_instrument_sem_seg_test"]["points_per_image"] == ""
    assert json.load(open(json_path))["sam_mi"]["ade20k_150_test_sem_seg"]["injected_masks_per_image"] == 9.25


def test_same_run_is_reused(root, tmp_path):
    cfg, out = _cfg(tmp_path), tmp_path / "eval"
    _run(cfg, out)
    mtime = os.stat(out / NAME / "results.json").st_mtime_ns
    outcome, log = _run(_cfg(tmp_path, "OUTPUT_DIR", "elsewhere", "DATASETS.TEST", ("a", "b")), out)
    assert outcome.evaluated == [] and NAME in outcome.results and "not re-evaluated" in log
    assert os.stat(out / NAME / "results.json").st_mtime_ns == mtime


@pytest.mark.parametrize("change, field", [
    ("weights", "weights MODEL.WEIGHTS differ"),
    ("config", "config differs (1 key(s): MODEL.SAM_MI.INFERENCE.WINDOW_OVERLAP: 0.5 -> 0.25)"),
    ("protocol", "protocol flags differ"),
    ("vocabulary", "vocabulary differs: first difference at #0"),
    ("images", "number of images differs: 4 stored, 3 now"),
])
def test_result_produced_differently_is_evaluated_again(root, tmp_path, change, field):
    out = tmp_path / "eval"
    _run(_cfg(tmp_path), out, model=StandIn(bias=0))
    first = _stored(out)["metrics"]
    cfg, protocol = _cfg(tmp_path), ("MODEL.SAM_MI.INFERENCE.SLIDING_WINDOW True",)
    if change == "weights":  # a new model_final.pth at the same path (the case)
        (tmp_path / "model_final.pth").write_bytes(b"weights B")
    elif change == "config":
        cfg = _cfg(tmp_path, "MODEL.SAM_MI.INFERENCE.WINDOW_OVERLAP", 0.25)
    elif change == "protocol":
        protocol = ()
    elif change == "vocabulary":
        vocab = tmp_path / "vocab.json"
        vocab.write_text(json.dumps([f"name {i}" for i in range(7)]))
        cfg = _cfg(tmp_path, "MODEL.SAM_MI.VOCABULARY_JSON", str(vocab))
    else:
        os.remove(root / "synthetic-stuff/images/val2017/000000000003.jpg")
    outcome, log = _run(cfg, out, model=StandIn(bias=1), protocol=protocol)
    assert outcome.evaluated == [NAME], log
    assert field in log and str(out / NAME / "results.json") in log
    assert _stored(out)["metrics"]["pACC"] != first["pACC"]  # the new model's numbers, not the old ones
    again, _ = _run(cfg, out, model=StandIn(bias=1), protocol=protocol)
    assert again.evaluated == []  # the new record is reused by the same run


@pytest.mark.parametrize("content", ["", "{", "[1, 2]", '{"metrics": 3}', "\x00\xff"])
def test_damaged_result_is_evaluated_again_with_a_warning(root, tmp_path, content):
    cfg, out = _cfg(tmp_path), tmp_path / "eval"
    (out / NAME).mkdir(parents=True)
    (out / NAME / "results.json").write_bytes(content.encode("latin-1"))
    outcome, log = _run(cfg, out)
    assert outcome.evaluated == [NAME] and not outcome.failed
    assert f"{out / NAME / 'results.json'} is damaged" in log
    assert _stored(out)["provenance"]["num_images"] == 4


def test_incomplete_dataset_is_evaluated_with_a_warning(root, tmp_path):
    os.remove(root / "synthetic-stuff/images/val2017/000000000001.jpg")
    outcome, log = _run(_cfg(tmp_path), tmp_path / "eval")
    assert outcome.evaluated == [NAME] and _stored(tmp_path / "eval")["num_images"] == 3
    assert "1 of 4 annotations" in log and "NOT comparable" in log


def test_invalid_vocabulary_fails_the_dataset_not_the_suite(root, tmp_path):
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps(["sky", "grass"]))
    outcome, log = _run(_cfg(tmp_path, "MODEL.SAM_MI.VOCABULARY_JSON", str(vocab)), tmp_path / "eval")
    assert outcome.evaluated == [] and "has 2 class names" in outcome.failed[NAME] and "vocab.json" in log


def test_stats_are_gathered_over_processes(monkeypatch):
    """Two ranks simulated in one process: each evaluator sees its share; the main one gets all rows
    through detectron2.utils.comm.gather, the other returns None (as detectron2's evaluators)."""
    from detectron2.utils import comm

    evaluators = [SAMMIStatsEvaluator(distributed=True) for _ in range(2)]
    for rank, ev in enumerate(evaluators):
        ev.reset()
        counts = {"num_points": 10 * (rank + 1), "num_sam_masks": rank + 1, "num_masks": 1, "injected": rank == 0}
        ev.process([{}] * (rank + 1), [{"sam_mi": counts}] * (rank + 1))
    shares = [ev._rows for ev in evaluators]
    monkeypatch.setattr(comm, "synchronize", lambda: None)
    monkeypatch.setattr(comm, "gather", lambda data, dst=0: shares if data is shares[0] else [])
    monkeypatch.setattr(comm, "is_main_process", lambda: True)
    result = evaluators[0].evaluate()["sam_mi"]
    # rank 0: one image with 10 points; rank 1: two images with 20 points each
    assert result["images"] == 3 and result["points_per_image"] == pytest.approx(50 / 3)
    assert result["injected_masks_per_image"] == pytest.approx(1 / 3)
    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    assert evaluators[1].evaluate() is None


def test_stats_evaluator_without_counts():
    ev = SAMMIStatsEvaluator(distributed=False)
    ev.reset()
    ev.process([{}], [{"sem_seg": torch.zeros(1)}])
    assert ev.evaluate() == {}


@pytest.mark.parametrize("damage, words", [
    ("truncated image", ["000000000002.jpg", "incomplete", "re-download"]),
    ("label size", ["000000000002.png", "is 16x16 (WxH) but its image", "000000000002.jpg"]),
    ("rgb label", ["000000000002.png", "RGB"]),
    ("label id", ["000000000002.png", "id(s) 9", "7 classes"]),
])
def test_bad_files_fail_the_dataset_with_their_name(root, tmp_path, damage, words):
    from PIL import Image

    image = root / "synthetic-stuff/images/val2017/000000000002.jpg"
    label = root / "synthetic-stuff/annotations_detectron2/val2017/000000000002.png"
    if damage == "truncated image":
        image.write_bytes(image.read_bytes()[:300])
    elif damage == "label size":
        Image.new("L", (16, 16)).save(label)
    elif damage == "rgb label":
        Image.new("RGB", (32, 32)).save(label)
    else:
        Image.new("L", Image.open(image).size, 9).save(label)
    outcome, _ = _run(_cfg(tmp_path), tmp_path / "eval")
    assert outcome.evaluated == [] and NAME in outcome.failed
    assert all(w in outcome.failed[NAME] for w in words), outcome.failed[NAME]
    assert not (tmp_path / "eval" / NAME / "results.json").exists()
