"""The synthetic set generator and the training mapper (shapes, padding, ignore, bad input)."""
import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from PIL import Image

from sam_mi.config import add_sam_mi_config
from sam_mi.data import SemanticDatasetMapper
from sam_mi.data.synthetic import SYNTHETIC_STUFF_CLASSES, generate_synthetic_stuff

K = len(SYNTHETIC_STUFF_CLASSES)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("d2")
    generate_synthetic_stuff(root, num_train=12, num_val=3, image_size=48, seed=0)
    return root


def _pairs(root: Path, split: str):
    base = root / "synthetic-stuff"
    for img in sorted((base / "images" / split).iterdir()):
        label = base / "annotations_detectron2" / split / f"{img.stem}.png"
        yield np.asarray(Image.open(img)), np.asarray(Image.open(label))


def test_generator_layout_and_values(synthetic):
    base = synthetic / "synthetic-stuff"
    for split, n in (("train2017", 12), ("val2017", 3)):
        assert len(list((base / "images" / split).glob("*.jpg"))) == n
        assert len(list((base / "annotations_detectron2" / split).glob("*.png"))) == n
    assert json.loads((base / "classes.json").read_text()) == SYNTHETIC_STUFF_CLASSES
    seen, ignore_seen = set(), False
    for image, label in _pairs(synthetic, "train2017"):
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert label.dtype == np.uint8 and label.shape == image.shape[:2]
        assert image.shape[0] == 48 and 48 <= image.shape[1] <= 60
        values = set(np.unique(label).tolist())
        assert values <= set(range(K)) | {255}
        assert len(values - {255}) >= 2  # every image has a layout, not a single fill
        seen |= values - {255}
        ignore_seen |= 255 in values
    assert seen == set(range(K)) and ignore_seen


def test_classes_have_distinct_appearance(synthetic):
    # learnability: the mean colour of each class is far from every other class's
    sums, counts = np.zeros((K, 3)), np.zeros(K)
    for image, label in _pairs(synthetic, "train2017"):
        for k in range(K):
            m = label == k
            sums[k] += image[m].sum(0)
            counts[k] += m.sum()
    means = sums / counts[:, None]
    for a, b in combinations(range(K), 2):
        assert np.linalg.norm(means[a] - means[b]) > 25, (SYNTHETIC_STUFF_CLASSES[a], SYNTHETIC_STUFF_CLASSES[b])


def test_generator_is_deterministic(tmp_path):
    a = generate_synthetic_stuff(tmp_path / "a", num_train=3, num_val=1, image_size=(32, 40), seed=5)
    b = generate_synthetic_stuff(tmp_path / "b", num_train=3, num_val=1, image_size=(32, 40), seed=5)
    c = generate_synthetic_stuff(tmp_path / "c", num_train=3, num_val=1, image_size=(32, 40), seed=6)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 3 * 2 + 2 + 1
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    labels = sorted(a.glob("annotations_detectron2/*/*.png"))
    assert any((p.read_bytes() != (c / p.relative_to(a)).read_bytes()) for p in labels)
    assert np.asarray(Image.open(labels[0])).shape == (32, 40)


def _cfg(crop: bool = True, color_aug: bool = True, size_div: int = 64, min_size: int = 64):
    cfg = get_cfg()
    add_sam_mi_config(cfg)
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN = (min_size,)
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.CROP.ENABLED = crop
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = (48, 48)
    cfg.MODEL.SAM_MI.INPUT.COLOR_AUG_SSD = color_aug
    cfg.MODEL.SAM_MI.INPUT.SIZE_DIVISIBILITY = size_div
    cfg.DATASETS.TRAIN = ("synthetic_stuff_train_sem_seg",)
    return cfg


def test_mapper_crop_pad_and_ignore(synthetic, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(synthetic))
    records = DatasetCatalog.get("synthetic_stuff_train_sem_seg")
    mapper = SemanticDatasetMapper(_cfg(), is_train=True)
    for record in records[:4]:
        out = mapper(record)
        w0, h0 = Image.open(record["file_name"]).size
        assert (out["height"], out["width"]) == (h0, w0) and out["file_name"] == record["file_name"]
        image, sem = out["image"], out["sem_seg"]
        assert image.dtype == torch.uint8 and image.shape == (3, 64, 64)
        assert sem.dtype == torch.int64 and sem.shape == (64, 64)
        # 48x48 crop at the top-left, padded bottom/right with 128 (image) and 255 (label)
        assert (image[:, 48:, :] == 128).all() and (image[:, :, 48:] == 128).all()
        assert (sem[48:, :] == 255).all() and (sem[:, 48:] == 255).all()
        inside = set(torch.unique(sem[:48, :48]).tolist())
        assert inside <= set(range(K)) | {255} and inside - {255}


def test_mapper_keeps_image_and_label_aligned(synthetic, monkeypatch):
    # no crop / colour aug / resize (short side already 48): the output is the input or its mirror image
    monkeypatch.setenv("DETECTRON2_DATASETS", str(synthetic))
    record = DatasetCatalog.get("synthetic_stuff_train_sem_seg")[0]
    mapper = SemanticDatasetMapper(_cfg(crop=False, color_aug=False, size_div=-1, min_size=48))
    raw_img, raw_lab = np.asarray(Image.open(record["file_name"])), np.asarray(Image.open(record["sem_seg_file_name"]))
    flips = set()
    for _ in range(8):
        out = mapper(record)
        img, lab = out["image"].permute(1, 2, 0).numpy(), out["sem_seg"].numpy()
        flipped = not np.array_equal(lab, raw_lab)
        if flipped:
            np.testing.assert_array_equal(lab, raw_lab[:, ::-1])
        np.testing.assert_array_equal(img, raw_img[:, ::-1] if flipped else raw_img)
        flips.add(flipped)
    assert flips == {True, False}  # RandomFlip is in the pipeline


def test_mapper_pads_to_next_multiple(synthetic, monkeypatch):
    # larger than SIZE_DIVISIBILITY: padded up to the next multiple (Mask2Former would crop here)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(synthetic))
    record = DatasetCatalog.get("synthetic_stuff_train_sem_seg")[1]
    out = SemanticDatasetMapper(_cfg(crop=False, color_aug=False, size_div=32, min_size=40))(record)
    h, w = out["sem_seg"].shape
    assert h == 64 and w % 32 == 0 and out["image"].shape[1:] == (h, w)
    assert (out["sem_seg"][40:] == 255).all() and (out["image"][:, 40:] == 128).all()
    assert (out["sem_seg"][:40] != 255).float().mean() > 0.5


def _write(path: Path, array: np.ndarray) -> str:
    Image.fromarray(array).save(path)
    return str(path)


def _plain_mapper(ignore_label: int = 255, size_div: int = -1) -> SemanticDatasetMapper:
    return SemanticDatasetMapper(
        augmentations=[T.ResizeShortestEdge(20, 100), T.RandomFlip()],
        ignore_label=ignore_label,
        size_divisibility=size_div,
    )


def test_mapper_converts_grayscale_and_rgba(tmp_path):
    rng = np.random.default_rng(0)
    label = _write(tmp_path / "lab.png", rng.integers(0, 5, (20, 24), dtype=np.uint8))
    gray = rng.integers(0, 256, (20, 24), dtype=np.uint8)
    out = _plain_mapper()({"file_name": _write(tmp_path / "gray.png", gray), "sem_seg_file_name": label})
    assert out["image"].shape == (3, 20, 24)
    assert torch.equal(out["image"][0], out["image"][1]) and torch.equal(out["image"][1], out["image"][2])
    channel = out["image"][0].numpy()
    assert np.array_equal(channel, gray) or np.array_equal(channel, gray[:, ::-1])  # grey level kept as R=G=B
    rgba = rng.integers(0, 256, (20, 24, 4), dtype=np.uint8)
    out = _plain_mapper()({"file_name": _write(tmp_path / "rgba.png", rgba), "sem_seg_file_name": label})
    img = out["image"].permute(1, 2, 0).numpy()
    assert img.shape == (20, 24, 3)
    # alpha dropped, colours kept (up to the random horizontal flip)
    assert np.array_equal(img, rgba[..., :3]) or np.array_equal(img, rgba[:, ::-1, :3])


def test_mapper_uint16_labels_and_ignore(tmp_path):
    label = np.full((20, 24), 846, dtype=np.uint16)
    label[:, :6] = 65535
    rec = {
        "file_name": _write(tmp_path / "img.png", np.zeros((20, 24, 3), np.uint8)),
        "sem_seg_file_name": _write(tmp_path / "lab.tif", label),
    }
    out = _plain_mapper(ignore_label=65535, size_div=16)(rec)
    sem = out["sem_seg"]
    assert sem.shape == (32, 32) and set(torch.unique(sem).tolist()) == {846, 65535}
    assert (sem[20:] == 65535).all() and (sem[:20] == 846).sum() == 20 * 18


def test_mapper_rejects_bad_labels(tmp_path):
    image = _write(tmp_path / "img_1.jpg", np.zeros((12, 10, 3), np.uint8))
    wrong = _write(tmp_path / "lab_1.png", np.zeros((10, 12), np.uint8))
    with pytest.raises(ValueError, match=r"lab_1\.png.*12x10.*img_1\.jpg.*10x12"):
        _plain_mapper()({"file_name": image, "sem_seg_file_name": wrong})
    colour = _write(tmp_path / "lab_rgb.png", np.zeros((12, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="single-channel"):
        _plain_mapper()({"file_name": image, "sem_seg_file_name": colour})
    with pytest.raises(ValueError, match="sem_seg_file_name"):
        _plain_mapper()({"file_name": image})


def test_mapper_rejects_test_mode_and_bgr():
    with pytest.raises(ValueError, match="DatasetMapper"):
        SemanticDatasetMapper(_cfg(), is_train=False)
    cfg = _cfg()
    cfg.INPUT.FORMAT = "BGR"
    with pytest.raises(ValueError, match="RGB"):
        SemanticDatasetMapper(cfg)
