"""Dataset registration: names, class lists, metadata, lazy roots, and the 'not prepared' error."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

import sam_mi.data  # noqa: F401  (registers the datasets)
from sam_mi.data.datasets import SPLITS
from sam_mi.data.datasets import class_names as cn
from sam_mi.data.synthetic import generate_synthetic_stuff

REPO = Path(__file__).resolve().parent.parent

# name -> (number of evaluated classes, ignore label, evaluator type, preparation script)
EXPECTED = {
    "coco_2017_train_stuff_all_sem_seg": (171, 255, "sem_seg", "prepare_coco_stuff.py"),
    "coco_2017_test_stuff_all_sem_seg": (171, 255, "sem_seg", "prepare_coco_stuff.py"),
    "ade20k_150_test_sem_seg": (150, 255, "sem_seg", "prepare_ade20k_150.py"),
    "ade20k_full_sem_seg_freq_val_all": (847, 65535, "sem_seg", "prepare_ade20k_full.py"),
    "context_59_test_sem_seg": (59, 255, "sem_seg", "prepare_pascal_context_59.py"),
    "context_459_test_sem_seg": (459, 65535, "sem_seg", "prepare_pascal_context_459.py"),
    "voc_2012_test_sem_seg": (20, 255, "sem_seg", "prepare_voc.py"),
    "voc_2012_test_background_sem_seg": (21, 255, "sem_seg_background", "prepare_voc.py"),
    "synthetic_stuff_train_sem_seg": (7, 255, "sem_seg", "sam_mi.data.synthetic"),
    "synthetic_stuff_val_sem_seg": (7, 255, "sem_seg", "sam_mi.data.synthetic"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_registered_with_metadata(name):
    count, ignore, evaluator, _ = EXPECTED[name]
    assert name in DatasetCatalog.list()
    meta = MetadataCatalog.get(name)
    assert len(meta.stuff_classes) == count
    assert len(set(meta.stuff_classes)) == count  # no duplicated names
    assert meta.ignore_label == ignore and meta.evaluator_type == evaluator
    split = SPLITS[name]
    assert meta.image_root.endswith(split.image_dir) and meta.sem_seg_root.endswith(split.gt_dir)


def test_vocabularies():
    ade = MetadataCatalog.get("ade20k_150_test_sem_seg")
    assert len(ade.vocabulary) == 150 and ade.vocabulary != ade.stuff_classes
    # same order as detectron2's list: most first synonyms agree (10 names differ on purpose)
    same = sum(v.strip() == c.split(",")[0].strip() for v, c in zip(ade.vocabulary, ade.stuff_classes))
    assert same == 140
    vocb = MetadataCatalog.get("voc_2012_test_background_sem_seg")
    assert len(vocb.vocabulary) == 59 and vocb.stuff_classes[-1] == "background"
    assert vocb.vocabulary[:20] == vocb.stuff_classes[:20] == cn.VOC_20_CLASSES
    context = vocb.vocabulary[20:]
    assert len(set(context)) == 39 and set(context) <= set(cn.PASCAL_CONTEXT_59_CLASSES)
    assert not set(context) & set(cn.VOC_20_CLASSES)
    assert vocb.background_class == 20
    for name in ("coco_2017_test_stuff_all_sem_seg", "context_59_test_sem_seg", "voc_2012_test_sem_seg"):
        assert MetadataCatalog.get(name).get("vocabulary", None) is None  # prompts = stuff_classes


def test_class_lists_agree_with_raw_ids():
    # COCO-Stuff: 80 things from detectron2, then stuff ids 91..181; sorted so train ids follow raw ids
    things = [c["name"] for c in COCO_CATEGORIES if c["isthing"]]
    assert cn.COCO_STUFF_171_CLASSES[:80] == things
    assert cn.COCO_STUFF_171_CLASSES[80] == "banner" and cn.COCO_STUFF_171_CLASSES[-1] == "wood"
    assert cn.COCO_STUFF_171_IDS == sorted(cn.COCO_STUFF_171_IDS) and len(set(cn.COCO_STUFF_171_IDS)) == 171
    # PC-59: the k-th raw id (1-based PC-459 label) names the k-th PC-59 class; CAT-Seg renames "table"
    raw = cn.pascal_context_59_raw_ids()
    assert raw[0] == 0 and len(raw) == 60
    names459 = [cn.PASCAL_CONTEXT_459_CLASSES[i - 1] for i in raw[1:]]
    renamed = {"table": "diningtable"}
    assert [renamed.get(n, n) for n in names459] == cn.PASCAL_CONTEXT_59_CLASSES
    assert len(cn.ADE20K_847_IDS) == len(set(cn.ADE20K_847_IDS)) == 847
    assert cn.ADE20K_847_CLASSES[0] == "wall" and cn.ADE20K_847_IDS[0] == 2978


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_unprepared_dataset_names_the_script(name, tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    script = EXPECTED[name][3]
    with pytest.raises(FileNotFoundError, match=rf"(?s){name}.*not prepared.*{str(tmp_path)}.*{script}"):
        DatasetCatalog.get(name)


def test_images_without_annotation_are_reported(tmp_path, monkeypatch):
    # annotations exist but no image matches them: still an error naming the script, not an empty list
    gen = generate_synthetic_stuff(tmp_path, num_train=2, num_val=0, image_size=32, seed=0)
    for f in (gen / "images/train2017").iterdir():
        f.unlink()
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no \\*.jpg image"):
        DatasetCatalog.get("synthetic_stuff_train_sem_seg")


def test_loader_resolves_root_at_load_time(tmp_path, monkeypatch):
    generate_synthetic_stuff(tmp_path / "a", num_train=3, num_val=2, image_size=32, seed=0)
    generate_synthetic_stuff(tmp_path / "b", num_train=1, num_val=1, image_size=32, seed=0)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "a"))
    train = DatasetCatalog.get("synthetic_stuff_train_sem_seg")
    assert len(train) == 3 and len(DatasetCatalog.get("synthetic_stuff_val_sem_seg")) == 2
    for record in train:
        assert Path(record["file_name"]).stem == Path(record["sem_seg_file_name"]).stem
        assert os.path.isfile(record["file_name"]) and os.path.isfile(record["sem_seg_file_name"])
        assert str(tmp_path / "a") in record["file_name"]
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "b"))
    assert len(DatasetCatalog.get("synthetic_stuff_train_sem_seg")) == 1


def test_pairing_uses_stems_not_order(tmp_path, monkeypatch):
    # equal counts but one image lacks its annotation: only the matching pair may be returned
    gen = generate_synthetic_stuff(tmp_path, num_train=2, num_val=0, image_size=32, seed=0)
    (gen / "annotations_detectron2/train2017/000000000000.png").unlink()
    (gen / "annotations_detectron2/train2017/000000000001.png").rename(
        gen / "annotations_detectron2/train2017/000000000009.png"
    )
    (gen / "images/train2017/000000000001.jpg").rename(gen / "images/train2017/000000000009.jpg")
    (gen / "images/train2017/000000000000.jpg").rename(gen / "images/train2017/000000000005.jpg")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    records = DatasetCatalog.get("synthetic_stuff_train_sem_seg")
    assert [Path(r["file_name"]).name for r in records] == ["000000000009.jpg"]


def test_import_does_not_touch_the_disk(tmp_path):
    root = tmp_path / "does-not-exist"
    code = (
        "import sam_mi.data; from detectron2.data import MetadataCatalog; "
        "print(len(MetadataCatalog.get('ade20k_full_sem_seg_freq_val_all').stuff_classes))"
    )
    env = dict(os.environ, DETECTRON2_DATASETS=str(root))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "847"
    assert not root.exists()


class _Records(logging.Handler):
    """Collects the warnings of one logger (independent of detectron2's propagate settings)."""

    def __init__(self, logger_name: str):
        super().__init__(logging.WARNING)
        self.messages = []
        self.logger = logging.getLogger(logger_name)

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)


def test_unpaired_files_are_warned_about_with_counts(tmp_path, monkeypatch):
    gen = generate_synthetic_stuff(tmp_path, num_train=0, num_val=6, image_size=32, seed=0)
    images, labels = gen / "images/val2017", gen / "annotations_detectron2/val2017"
    for stem in ("000000000001", "000000000003", "000000000004"):  # half the images lost
        (images / f"{stem}.jpg").unlink()
    (labels / "000000000005.png").unlink()  # and one annotation
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    with _Records("sam_mi.data.datasets.register_common") as log:
        records = DatasetCatalog.get("synthetic_stuff_val_sem_seg")
        DatasetCatalog.get("synthetic_stuff_val_sem_seg")  # the same situation is reported once
    assert [Path(r["file_name"]).stem for r in records] == ["000000000000", "000000000002"]
    assert len(log.messages) == 1, log.messages
    msg = log.messages[0]
    assert "3 of 5 annotations" in msg and "000000000001.png has no 000000000001.jpg" in msg
    assert "1 of 3 images" in msg and "000000000005.jpg" in msg
    assert "Using the 2 complete pairs" in msg and "sam_mi.data.synthetic" in msg


def test_complete_and_shared_image_folders_are_not_warned_about(tmp_path, monkeypatch):
    generate_synthetic_stuff(tmp_path, num_train=0, num_val=2, image_size=32, seed=0)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    voc = tmp_path / "VOCdevkit/VOC2012"
    (voc / "annotations_detectron2/val").mkdir(parents=True)
    (voc / "JPEGImages").mkdir(parents=True)
    for stem in ("a", "b", "c"):  # JPEGImages holds the training images too: no warning for them
        (voc / f"JPEGImages/{stem}.jpg").write_bytes(b"")
    (voc / "annotations_detectron2/val/a.png").write_bytes(b"")
    with _Records("sam_mi.data.datasets.register_common") as log:
        assert len(DatasetCatalog.get("synthetic_stuff_val_sem_seg")) == 2
        assert len(DatasetCatalog.get("voc_2012_test_sem_seg")) == 1
    assert log.messages == []
