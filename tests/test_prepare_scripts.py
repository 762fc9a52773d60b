"""datasets/prepare_*.py on tiny raw fixtures in the real download formats; exact output label values."""
import importlib.util
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from PIL import Image
from pycocotools import mask as mask_util

import sam_mi.data  # noqa: F401  (registers the datasets)

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = ["coco_stuff", "ade20k_150", "ade20k_full", "pascal_context_59", "pascal_context_459", "voc"]


def _load_module(module_name: str, path: Path):
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _script(name: str):
    """Load datasets/prepare_<name>.py as a module; its sibling prepare_common is provided the same way
    (registered in sys.modules, which is what its ``import prepare_common`` looks up)."""
    if "prepare_common" not in sys.modules:
        sys.modules["prepare_common"] = _load_module("prepare_common", REPO / "datasets" / "prepare_common.py")
    return _load_module(f"prepare_{name}", REPO / "datasets" / f"prepare_{name}.py")


def _jpg(path: Path, h: int, w: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 100, dtype=np.uint8)).save(path)


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _load(name: str, root: Path, monkeypatch) -> list:
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    return DatasetCatalog.get(name)


def test_coco_stuff(tmp_path, monkeypatch):
    # 0-based COCO ids: 0 person, 11 unused ("street sign"), 12 stop sign, 89 toothbrush, 90 unused,
    # 91 banner (first stuff), 181 wood (last), 182 out of range, 255 unlabelled
    raw = np.array([[0, 11, 12, 89, 90], [91, 181, 182, 255, 0]], dtype=np.uint8)
    expected = np.array([[0, 255, 11, 79, 255], [80, 170, 255, 255, 0]], dtype=np.uint8)
    for split in ("train2017", "val2017"):
        _jpg(tmp_path / f"coco-stuff/images/{split}/000000000001.jpg", 2, 5)
        _png(tmp_path / f"coco-stuff/annotations/{split}/000000000001.png", raw)
    _script("coco_stuff").main(["--root", str(tmp_path)])
    for split in ("train2017", "val2017"):
        out = _read(tmp_path / f"coco-stuff/annotations_detectron2/{split}/000000000001.png")
        np.testing.assert_array_equal(out, expected)
    records = _load("coco_2017_test_stuff_all_sem_seg", tmp_path, monkeypatch)
    assert [Path(r["sem_seg_file_name"]).name for r in records] == ["000000000001.png"]


def test_ade20k_150(tmp_path, monkeypatch):
    raw = np.array([[0, 1, 2], [75, 149, 150]], dtype=np.uint8)
    _jpg(tmp_path / "ADEChallengeData2016/images/validation/ADE_val_00000001.jpg", 2, 3)
    _png(tmp_path / "ADEChallengeData2016/annotations/validation/ADE_val_00000001.png", raw)
    _script("ade20k_150").main(["--root", str(tmp_path)])
    out = _read(tmp_path / "ADEChallengeData2016/annotations_detectron2/validation/ADE_val_00000001.png")
    np.testing.assert_array_equal(out, np.array([[255, 0, 1], [74, 148, 149]], dtype=np.uint8))
    assert len(_load("ade20k_150_test_sem_seg", tmp_path, monkeypatch)) == 1


def _ade_seg_png(ids: np.ndarray) -> np.ndarray:
    """ADE full *_seg.png encoding: class = R / 10 * 256 + G (B holds instances)."""
    seg = np.zeros((*ids.shape, 3), dtype=np.uint8)
    seg[..., 0] = (ids // 256) * 10
    seg[..., 1] = ids % 256
    seg[..., 2] = 7
    return seg


def test_ade20k_full(tmp_path, monkeypatch):
    folder = "ADE20K_2021_17_01/images/ADE/validation/abbey"
    # small image, kept at its size: 2978 wall -> 0, 312 building -> 1, 3148 adding machine -> 846,
    # 5 (not among the 847) and 0 (unlabelled) -> 65535
    small = np.array([[2978, 312, 3148], [5, 0, 2978]], dtype=np.int64)
    _jpg(tmp_path / folder / "ADE_val_00000001.jpg", 2, 3)
    _png(tmp_path / folder / "ADE_val_00000001_seg.png", _ade_seg_png(small))
    # large image (short side 520 > 512): resized to 512 x round(600 / 520 * 512) = 512 x 591
    big = np.full((520, 600), 312, dtype=np.int64)
    big[:, 300:] = 2855  # tree -> 3
    _jpg(tmp_path / folder / "ADE_val_00000002.jpg", 520, 600)
    _png(tmp_path / folder / "ADE_val_00000002_seg.png", _ade_seg_png(big))
    index = {
        "folder": [folder, folder, "ADE20K_2021_17_01/images/ADE/training/x"],
        # the training entry has no file: it must be skipped, not read
        "filename": ["ADE_val_00000001.jpg", "ADE_val_00000002.jpg", "ADE_train_00000001.jpg"],
    }
    with open(tmp_path / "ADE20K_2021_17_01/index_ade20k.pkl", "wb") as f:
        pickle.dump(index, f)
    _script("ade20k_full").main(["--root", str(tmp_path)])
    lab_dir = tmp_path / "ADE20K_2021_17_01/annotations_detectron2/validation"
    out = _read(lab_dir / "ADE_val_00000001.tif")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, np.array([[0, 1, 846], [65535, 65535, 0]], dtype=np.uint16))
    out_big = _read(lab_dir / "ADE_val_00000002.tif")
    img_big = _read(tmp_path / "ADE20K_2021_17_01/images_detectron2/validation/ADE_val_00000002.jpg")
    assert out_big.shape == (512, 591) and img_big.shape == (512, 591, 3)
    assert set(np.unique(out_big)) == {1, 3} and out_big[0, 0] == 1 and out_big[0, -1] == 3
    assert not (tmp_path / "ADE20K_2021_17_01/annotations_detectron2/training").exists()
    assert len(_load("ade20k_full_sem_seg_freq_val_all", tmp_path, monkeypatch)) == 2


def _rle(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2
def test_pascal_context_59(tmp_path, monkeypatch):
    voc = tmp_path / "VOCdevkit/VOC2010"
    h, w = 3, 4
    _jpg(voc / "JPEGImages/2008_000001.jpg", h, w)
    a = np.zeros((h, w), bool)
    a[0, :] = True  # aeroplane (raw 2) -> 0
    b = np.zeros((h, w), bool)
    b[:, 0] = True  # wood (raw 458) -> 58, painted after aeroplane so it wins at (0, 0)
    c = np.zeros((h, w), bool)
    c[2, 2:] = True  # raw 3 ("airconditioner") is not a PC-59 class -> 255
    d = np.zeros((h, w), bool)
    d[1, 3] = True  # raw 397 ("table") -> diningtable, 49
    data = {
        "images": [
            {"image_id": 1, "file_name": "2008_000001.jpg", "height": h, "width": w, "phase": "val"},
            {"image_id": 2, "file_name": "2008_000002.jpg", "height": h, "width": w, "phase": "train"},
        ],
        "annos_segmentation": [
            {"image_id": 1, "category_id": 2, "segmentation": _rle(a)},
            {"image_id": 1, "category_id": 458, "segmentation": _rle(b)},
            {"image_id": 1, "category_id": 3, "segmentation": _rle(c)},
            {"image_id": 1, "category_id": 397, "segmentation": _rle(d)},
            {"image_id": 2, "category_id": 2, "segmentation": _rle(a)},
        ],
    }
    (voc / "trainval_merged.json").write_text(json.dumps(data))
    _script("pascal_context_59").main(["--root", str(tmp_path)])
    out_dir = voc / "annotations_detectron2/pc59_val"
    assert sorted(p.name for p in out_dir.iterdir()) == ["2008_000001.png"]  # train image not written
    expected = np.array([[58, 0, 0, 0], [58, 255, 255, 49], [58, 255, 255, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(_read(out_dir / "2008_000001.png"), expected)
    assert len(_load("context_59_test_sem_seg", tmp_path, monkeypatch)) == 1


def test_pascal_context_459(tmp_path, monkeypatch):
    voc = tmp_path / "VOCdevkit/VOC2010"
    _jpg(voc / "JPEGImages/2008_000001.jpg", 2, 2)
    (voc / "trainval").mkdir(parents=True)
    scipy.io.savemat(voc / "trainval/2008_000001.mat", {"LabelMap": np.array([[1, 459], [2, 0]], dtype=np.uint16)})
    (voc / "pascalcontext_val.txt").write_text("2008_000001\n2008_000099\n")  # second id has no .mat
    _script("pascal_context_459").main(["--root", str(tmp_path)])
    out_dir = voc / "annotations_detectron2/pc459_val"
    assert sorted(p.name for p in out_dir.iterdir()) == ["2008_000001.tif"]
    out = read_image(str(out_dir / "2008_000001.tif"))  # as the mapper / evaluator read it
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, np.array([[0, 458], [1, 65535]], dtype=np.uint16))
    assert len(_load("context_459_test_sem_seg", tmp_path, monkeypatch)) == 1


def _palette_png(path: Path, array: np.ndarray) -> None:
    """A palette ("P") PNG like VOC's, whose indices are the class ids."""
    arr = np.ascontiguousarray(array, dtype=np.uint8)
    img = Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.tobytes())
    img.putpalette([v for i in range(256) for v in (i, 0, 255 - i)])
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def test_voc(tmp_path, monkeypatch):
    voc = tmp_path / "VOCdevkit/VOC2012"
    ids = ["2007_000001", "2007_000002", "2007_000003"]
    labels = {
        "2007_000001": np.array([[0, 1], [20, 255]]),
        "2007_000002": np.zeros((2, 2)),  # all background: skipped for VOC-20, kept (all 20) for VOC-20b
        "2007_000003": np.full((2, 2), 255),  # all boundary: skipped for both
    }
    for i in ids:
        _jpg(voc / f"JPEGImages/{i}.jpg", 2, 2)
        _palette_png(voc / f"SegmentationClassAug/{i}.png", labels[i])
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")
    assert Image.open(voc / "SegmentationClassAug/2007_000001.png").mode == "P"
    _script("voc").main(["--root", str(tmp_path)])
    out, out_bg = voc / "annotations_detectron2/val", voc / "annotations_detectron2_bg/val"
    assert sorted(p.name for p in out.iterdir()) == ["2007_000001.png"]
    assert sorted(p.name for p in out_bg.iterdir()) == ["2007_000001.png", "2007_000002.png"]
    np.testing.assert_array_equal(_read(out / "2007_000001.png"), [[255, 0], [19, 255]])
    np.testing.assert_array_equal(_read(out_bg / "2007_000001.png"), [[20, 0], [19, 255]])
    np.testing.assert_array_equal(_read(out_bg / "2007_000002.png"), [[20, 20], [20, 20]])
    assert len(_load("voc_2012_test_sem_seg", tmp_path, monkeypatch)) == 1
    assert len(_load("voc_2012_test_background_sem_seg", tmp_path, monkeypatch)) == 2


@pytest.mark.parametrize("name", SCRIPTS)
def test_missing_raw_data_names_the_download(name, tmp_path):
    module = _script(name)
    with pytest.raises(FileNotFoundError, match=r"(?s)missing .*(download|request).*README"):
        module.main(["--root", str(tmp_path)])


def test_missing_raw_data_cli_exit_code(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "datasets/prepare_voc.py"), "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "VOCtrainval_11-May-2012.tar" in proc.stderr and "Traceback" not in proc.stderr
