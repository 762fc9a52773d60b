"""Evaluators, MESS registration, paper numbers and the report (no model needed)."""
import csv
import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from PIL import Image

import sam_mi  # noqa: F401  (registers the standard benchmarks)
from sam_mi.data.datasets.register_mess import (
    MANUAL_DOWNLOADS,
    PAXRAY_TASKS,
    is_mess_dataset,
    mess_display_names,
    mess_domains,
    mess_prepare_command,
    register_mess_datasets,
)
from sam_mi.evaluation import (
    VOCbEvaluator,
    aggregate,
    build_evaluator,
    evaluator_kind,
    load_paper_results,
    map_background_predictions,
    merge_background_scores,
    write_report,
)
from sam_mi.evaluation.report import paper_row


# ----------------------------------------------------------------------------- VOC-20b background rule
def test_merge_background_scores_equals_mapping_of_argmax():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(59, 7, 9, generator=g)
    # ties between a VOC class and a context class must resolve as the argmax of the full vocabulary
    scores[3, 0, 0] = scores[40, 0, 0] = 10.0
    scores[25, 1, 1] = scores[30, 1, 1] = 10.0
    merged = merge_background_scores(scores, 20)
    assert merged.shape == (21, 7, 9)
    expected = map_background_predictions(scores.argmax(0).numpy(), 20)
    np.testing.assert_array_equal(merged.argmax(0).numpy(), expected)
    assert expected[0, 0] == 3 and expected[1, 1] == 20
    assert expected.max() == 20 and (scores.argmax(0) > 20).any()  # the rule did something


def test_merge_background_scores_rejects_short_vocabulary():
    with pytest.raises(ValueError, match="vocabulary"):
        merge_background_scores(torch.zeros(20, 2, 2), 20)


def _register_tmp(name, tmp_path, gts, **meta):
    """A dataset of len(gts) tiny images whose GT PNGs are ``gts``."""
    records = []
    for i, gt in enumerate(gts):
        gt_file, img_file = tmp_path / f"{name}_{i}.png", tmp_path / f"{name}_{i}.jpg"
        Image.fromarray(gt.astype(np.uint8)).save(gt_file)
        records.append({"file_name": str(img_file), "sem_seg_file_name": str(gt_file)})
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda r=records: r)
    MetadataCatalog.get(name).set(ignore_label=255, **meta)
    return records


def test_vocb_evaluator_maps_context_predictions_to_background(tmp_path):
    rng = np.random.default_rng(1)
    gts = [rng.integers(0, 21, (6, 8)) for _ in range(2)]
    gts[0][0] = 255
    classes = [f"c{i}" for i in range(20)] + ["background"]
    records = _register_tmp("test_vocb_tmp", tmp_path, gts, stuff_classes=classes,
                            evaluator_type="sem_seg_background", background_class=20)
    evaluator = build_evaluator(None, "test_vocb_tmp")
    assert isinstance(evaluator, VOCbEvaluator)
    evaluator.reset()
    scores = [torch.randn(59, 6, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    for rec, s in zip(records, scores):
        evaluator.process([{"file_name": rec["file_name"]}], [{"sem_seg": s}])
    miou = evaluator.evaluate()["sem_seg"]["mIoU"]

    # the same by hand: map, confusion matrix, IoU over classes present
    conf = np.zeros((21, 21))
    for gt, s in zip(gts, scores):
        pred = map_background_predictions(s.argmax(0).numpy(), 20)
        valid = gt != 255
        np.add.at(conf, (pred[valid], gt[valid]), 1)
    tp, pos_gt, pos_pred = np.diag(conf), conf.sum(0), conf.sum(1)
    valid = pos_gt > 0
    assert miou == pytest.approx(100 * np.mean(tp[valid] / (pos_gt + pos_pred - tp)[valid]))


# ----------------------------------------------------------------------------- MESS registration / evaluator
def _kvasir_stand_in(root):
    for sub, value in (("images_detectron2", None), ("annotations_detectron2", 1)):
        folder = root / "kvasir-instrument" / sub / "test"
        folder.mkdir(parents=True)
        arr = np.zeros((4, 4, 3), np.uint8) if value is None else np.eye(4, dtype=np.uint8)
        Image.fromarray(arr).save(folder / "a.png")


def test_mess_registration_names_domains_and_metadata(tmp_path):
    names = register_mess_datasets(str(tmp_path))
    assert len(names) == 25 and len(set(names)) == 25
    assert set(PAXRAY_TASKS) <= set(names)
    domains = mess_domains()
    assert len({mess_display_names()[n] for n in names if n not in PAXRAY_TASKS}) == 21  # + PAXRay-4 = 22
    assert {domains[n] for n in names} == {"General", "Earth Monitoring", "Medical Sciences", "Engineering",
                                           "Agriculture and Biology"}
    # class names and background handling come from the package's metadata
    meta = MetadataCatalog.get("kvasir_instrument_sem_seg_test")
    assert list(meta.stuff_classes) == ["others", "tool"] and meta.background_class == 0
    assert list(meta.classes_of_interest) == [1]
    assert all(is_mess_dataset(n) for n in names)
    assert not is_mess_dataset("ade20k_150_test_sem_seg")
    assert evaluator_kind("pst900_sem_seg_test") == "mess_sem_seg"
    assert evaluator_kind("voc_2012_test_background_sem_seg") == "sem_seg_background"
    assert evaluator_kind("ade20k_full_sem_seg_freq_val_all") == "sem_seg"


def test_mess_reregisters_under_a_new_root_and_picks_mess_evaluator(tmp_path):
    from mess.evaluation.sem_seg_evaluation import MESSSemSegEvaluator

    register_mess_datasets(str(tmp_path / "elsewhere"))
    root = tmp_path / "root"
    _kvasir_stand_in(root)
    register_mess_datasets(str(root))
    records = DatasetCatalog.get("kvasir_instrument_sem_seg_test")
    assert len(records) == 1 and records[0]["file_name"].startswith(str(root))
    evaluator = build_evaluator(None, "kvasir_instrument_sem_seg_test", str(tmp_path / "out"))
    assert isinstance(evaluator, MESSSemSegEvaluator)


def test_mess_prepare_commands(tmp_path):
    register_mess_datasets(str(tmp_path))
    cmd = mess_prepare_command("kvasir_instrument_sem_seg_test")
    assert cmd.endswith("python -m mess.prepare_datasets.prepare_kvasir_instrument")
    assert str(tmp_path) in cmd
    # the five manual downloads say where to get the data
    manual = {"bdd100k_sem_seg_val": "bdd-data.berkeley.edu", "isprs_potsdam_sem_seg_test_irrg": "isprs.org",
              "floodnet_sem_seg_test": "drive.google.com", "uavid_sem_seg_val": "uavid.nl",
              "cryonuseg_sem_seg_test": "kaggle"}
    assert len(MANUAL_DOWNLOADS) == 5
    for name, hint in manual.items():
        assert hint in mess_prepare_command(name).lower(), name
    assert "foodseg" in mess_prepare_command("foodseg103_sem_seg_test")  # package module name, not ours


# ----------------------------------------------------------------------------- paper numbers
def test_paper_results_spot_values():
    tables = load_paper_results()["tables"]
    for t in ("table1", "table2", "table3", "table4", "table5", "table7", "table8", "table9"):
        assert tables[t]["caption"] and tables[t]["rows"], t
    assert paper_row("table1", "SAM-MI (ours)")["values"]["BDD100K"] == 47.76
    assert paper_row("table1", "Grounded-SAM")["values"]["DeepCrack"] == 59.02
    assert paper_row("table2", "SAM-MI (ours)", architecture="ViT-L/14")["values"]["A-150"] == 38.6
    assert paper_row("table2", "CAT-Seg", architecture="ViT-B/16")["values"]["PC-459"] == 19.0
    assert paper_row("table2", "SAM-CLIP")["values"]["A-847"] is None
    # Table 3's A-150 column is garbled into one cell in the text: 32.9 31.8 30.7 32.8 in row order
    assert [r["values"]["A-150"] for r in tables["table3"]["rows"]] == [32.9, 31.8, 30.7, 32.8]
    assert [(r["low"], r["high"], r["values"]["PC-459"]) for r in tables["table4"]["rows"]] == [
        (False, False, 19.0), (True, False, 19.6), (False, True, 19.5), (True, True, 19.8)]
    assert paper_row("table9", "HQ-SAM-H")["values"]["PC-459"] == 19.9
    assert paper_row("table5", "TSPP (ours)")["points"] == {"A-150": 41, "PC-59": 37}


def test_paper_mess_means_match_their_entries():
    table = load_paper_results()["tables"]["table1"]
    assert len(table["columns"]) == 22
    for row in table["rows"]:
        values = [row["values"][c] for c in table["columns"]]
        assert abs(np.mean(values) - row["mean"]) < 0.011, row["method"]  # the paper rounds to 0.01
    sam_mi = paper_row("table1", "SAM-MI (ours)")
    assert np.mean(list(sam_mi["values"].values())) == pytest.approx(33.28, abs=0.005)
    # Sec. 4.2: earth monitoring means 37.66 (SAM-MI) and 25.97 (Grounded-SAM)
    earth = [c for c in table["columns"] if table["column_domains"][c] == "Earth Monitoring"]
    assert np.mean([sam_mi["values"][c] for c in earth]) == pytest.approx(37.66, abs=0.005)
    assert np.mean([paper_row("table1", "Grounded-SAM")["values"][c] for c in earth]) == pytest.approx(25.97, abs=0.005)


def test_paper_dataset_mapping_agrees_with_mess():
    bench = load_paper_results()["benchmarks"]
    display, domains = mess_display_names(), mess_domains()
    mess_labels = {label: b for label, b in bench.items() if b["suite"] == "mess"}
    assert len(mess_labels) == 22
    for label, b in mess_labels.items():
        ids = ["paxray_combined"] if len(b["datasets"]) == 4 else b["datasets"]
        assert display[ids[0]] == label and domains[ids[0]] == b["domain"]
    assert bench["A-847"]["datasets"] == ["ade20k_full_sem_seg_freq_val_all"]
    assert bench["PAS-20b"]["datasets"] == ["voc_2012_test_background_sem_seg"]


# ----------------------------------------------------------------------------- aggregation and report
def _metrics(v):
    return {"mIoU": v, "CoI-mIoU": v / 2, "fwIoU": v + 1, "mACC": v + 2, "pACC": v + 3}


def test_aggregate_paxray_domains_and_mess_mean():
    results = {t: _metrics(v) for t, v in zip(PAXRAY_TASKS, (10.0, 20.0, 30.0, 40.0))}
    results["kvasir_instrument_sem_seg_test"] = _metrics(50.0)
    results["bdd100k_sem_seg_val"] = _metrics(60.0)
    results["ade20k_150_test_sem_seg"] = _metrics(5.0)
    summary = aggregate(results)
    assert summary["columns"]["PAXRay-4"]["mIoU"] == 25.0
    assert summary["columns"]["PAXRay-4"]["CoI-mIoU"] == 12.5
    assert summary["domains"]["Medical Sciences"]["metrics"]["mIoU"] == 37.5  # (25 + 50) / 2
    assert summary["domains"]["Medical Sciences"]["count"] == 2
    assert summary["domains"]["Medical Sciences"]["of"] == 4
    assert summary["mess_mean"]["metrics"]["mIoU"] == pytest.approx((25 + 50 + 60) / 3)
    assert summary["mess_mean"]["count"] == 3 and summary["mess_mean"]["of"] == 22
    del results[PAXRAY_TASKS[0]]  # PAXRay-4 needs all four tasks
    assert "PAXRay-4" not in aggregate(results)["columns"]


def test_write_report_files(tmp_path):
    results = {"ade20k_150_test_sem_seg": _metrics(33.456), "kvasir_instrument_sem_seg_test": _metrics(51.0)}
    results["kvasir_instrument_sem_seg_test"]["CoI-mIoU"] = None  # NaN stored as null
    csv_path, json_path, md_path = write_report(str(tmp_path), results, skipped={"x": "not prepared; cmd"})
    rows = {r["name"]: r for r in csv.DictReader(open(csv_path))}
    assert float(rows["ade20k_150_test_sem_seg"]["mIoU"]) == 33.456
    assert float(rows["ade20k_150_test_sem_seg"]["diff_mIoU"]) == pytest.approx(33.456 - 32.9)
    assert float(rows["kvasir_instrument_sem_seg_test"]["paper_SAM-MI_mIoU"]) == 49.44
    assert float(rows["MESS mean (1/22)"]["mIoU"]) == 51.0
    assert json.load(open(json_path))["datasets"] == results
    md = open(md_path).read()
    assert "| **This run** | ViT-B/16 |  |  | – | – | 33.46 |" in md  # Table 2 layout, A-150 column
    assert "+0.56" in md and "51.00" in md and "+1.56" in md  # differences to SAM-MI
    assert "Grounded-SAM (paper)" in md and "CAT-Seg (paper)" in md
    assert "`x` skipped: not prepared; cmd" in md
