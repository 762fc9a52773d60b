"""The project image reader (sam_mi.data.image_io) and the ground-truth check (sam_mi.data.validation),
through the training mapper, the test mapper and the evaluators alike."""
import io
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as d2_utils
from detectron2.data import transforms as T
from PIL import Image

from sam_mi.config import add_sam_mi_config
from sam_mi.data import EvalDatasetMapper, SemanticDatasetMapper
from sam_mi.data.image_io import ImageReadError, read_image, read_label, scale_16bit_to_8bit
from sam_mi.data.validation import GroundTruthError, check_label
from sam_mi.evaluation import build_evaluator


def _save(path, array, **kw) -> str:
    Image.fromarray(array).save(path, **kw)
    return str(path)


# ------------------------------------------------------------------------------------------- image modes
def test_16bit_image_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768], [65535, 128, 1000]], dtype=np.uint16)
    path = _save(tmp_path / "deep.png", values)
    assert Image.open(path).mode == "I;16"
    img = read_image(path)
    assert img.dtype == np.uint8 and img.shape == (2, 3, 3)
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(img[..., 0], expected)
    assert (img[..., 0] == img[..., 2]).all()
    # detectron2's reader clips the same file to all white (the bug this reader exists for)
    assert (d2_utils.read_image(path, format="RGB") == 255).sum() > 3
    assert img[0, 2, 0] == 128 and img[1, 0, 0] == 255 and img[0, 1, 0] == 1


def test_16bit_tiff_big_endian_and_32bit_int(tmp_path):
    values = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    big = Image.frombytes("I;16B", (4, 3), values.astype(">u2").tobytes())
    np.testing.assert_array_equal(read_image(_save(tmp_path / "b.tif", np.asarray(big)))[..., 1],
                                  scale_16bit_to_8bit(values))
    as_int = _save(tmp_path / "i32.tif", values.astype(np.int32))
    assert Image.open(as_int).mode == "I"
    np.testing.assert_array_equal(read_image(as_int)[..., 0], scale_16bit_to_8bit(values))
    too_wide = _save(tmp_path / "wide.tif", np.full((2, 2), 70000, np.int32))
    with pytest.raises(ImageReadError, match=r"wide\.tif.*outside the 16-bit range"):
        read_image(too_wide)


def test_float_image_is_rejected_with_the_file_name(tmp_path):
    path = _save(tmp_path / "float.tif", np.random.default_rng(0).random((4, 5), dtype=np.float32))
    with pytest.raises(ImageReadError, match=r"float\.tif.*floating-point"):
        read_image(path)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "1"])
def test_8bit_modes_equal_detectron2(tmp_path, mode):
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (6, 7, 3), dtype=np.uint8))
    image = rgb.convert(mode)
    path = str(tmp_path / ("x.jpg" if mode == "CMYK" else "x.png"))
    image.save(path)
    np.testing.assert_array_equal(read_image(path), d2_utils.read_image(path, format="RGB"))
    np.testing.assert_array_equal(read_image(path, "BGR"), d2_utils.read_image(path, format="BGR"))


def test_exif_orientation_like_detectron2(tmp_path):
    array = np.zeros((4, 6, 3), np.uint8)
    array[0, :2] = 255  # a mark at the top-left
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = str(tmp_path / "rot.jpg")
    image.save(path, exif=exif, quality=100)
    ours = read_image(path)
    assert ours.shape == (6, 4, 3)  # rotated
    np.testing.assert_array_equal(ours, d2_utils.read_image(path, format="RGB"))
    # labels are arrays of ids: never re-oriented
    label = Image.fromarray(np.arange(24, dtype=np.uint8).reshape(4, 6))
    label.save(tmp_path / "rot_label.png", exif=exif)
    assert read_label(str(tmp_path / "rot_label.png")).shape == (4, 6)


def test_truncated_jpeg_names_the_file_and_hints(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageReadError, match=r"(?s)cut\.jpg.*truncated.*re-download"):
        read_image(str(path))
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ImageReadError, match=r"text\.jpg.*not an image file"):
        read_image(str(tmp_path / "text.jpg"))
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        read_image(str(tmp_path / "gone.jpg"))


# ------------------------------------------------------------------------------------------- label check
def test_check_label_rules():
    label = np.zeros((3, 4), np.uint8)
    assert check_label(label[..., None], "l.png").shape == (3, 4)  # one channel squeezed
    with pytest.raises(GroundTruthError, match=r"l\.png.*RGB"):
        check_label(np.zeros((3, 4, 3), np.uint8), "l.png", image_file="i.jpg")
    with pytest.raises(GroundTruthError, match=r"l\.png.*4x3.*i\.jpg.*5x3"):
        check_label(label, "l.png", image_file="i.jpg", image_size=(3, 5))
    label[0, 0], label[1, 1] = 7, 255
    check_label(label, "l.png", num_classes=8, ignore_label=255)  # 7 < 8, 255 ignored
    with pytest.raises(GroundTruthError, match=r"l\.png.*id\(s\) 7 \(1 pixels\).*7 classes"):
        check_label(label, "l.png", num_classes=7, ignore_label=255)
    with pytest.raises(GroundTruthError, match="integers"):
        check_label(label.astype(np.float32), "l.png")


# ------------------------------------------------------------------------------------------- mappers
def _train_mapper(num_classes=None):
    return SemanticDatasetMapper(augmentations=[T.ResizeShortestEdge(20, 100)], num_classes=num_classes)


def test_training_mapper_uses_the_reader_and_the_check(tmp_path):
    img16 = _save(tmp_path / "img16.png", np.full((20, 24), 65535, np.uint16))
    label = np.zeros((20, 24), np.uint8)
    label[0, 0] = 9
    lab = _save(tmp_path / "lab.png", label)
    out = _train_mapper()({"file_name": img16, "sem_seg_file_name": lab})
    assert out["image"].shape == (3, 20, 24) and (out["image"] == 255).all()  # 65535 -> 255, scaled
    with pytest.raises(GroundTruthError, match=r"lab\.png.*id\(s\) 9.*5 classes"):
        _train_mapper(num_classes=5)({"file_name": img16, "sem_seg_file_name": lab})
    with pytest.raises(ImageReadError, match="float.tif"):
        _train_mapper()({"file_name": _save(tmp_path / "float.tif", np.zeros((20, 24), np.float32)),
                         "sem_seg_file_name": lab})


def test_training_mapper_takes_num_classes_from_the_vocabulary(tmp_path):
    cfg = get_cfg()
    add_sam_mi_config(cfg)
    cfg.INPUT.FORMAT = "RGB"
    cfg.DATASETS.TRAIN = ("synthetic_stuff_train_sem_seg",)
    mapper = SemanticDatasetMapper(cfg, is_train=True)
    assert mapper.num_classes == len(MetadataCatalog.get("synthetic_stuff_train_sem_seg").stuff_classes)


def test_eval_mapper_reads_16bit_and_names_truncated_files(tmp_path):
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 16, 100
    with pytest.raises(ValueError, match="RGB"):
        EvalDatasetMapper(cfg)  # detectron2's default INPUT.FORMAT is BGR; the model takes RGB
    cfg.INPUT.FORMAT = "RGB"
    mapper = EvalDatasetMapper(cfg)
    path = _save(tmp_path / "img16.png", np.full((8, 12), 32896, np.uint16))
    out = mapper({"file_name": path, "sem_seg_file_name": "x.png"})
    assert (out["height"], out["width"]) == (8, 12) and out["image"].shape == (3, 16, 24)
    assert (out["image"] == 128).all() and "sem_seg_file_name" not in out
    (tmp_path / "cut.jpg").write_bytes(open(_save(tmp_path / "ok.jpg", np.zeros((32, 32, 3), np.uint8)),
                                            "rb").read()[:200])
    with pytest.raises(ImageReadError, match=r"cut\.jpg"):
        mapper({"file_name": str(tmp_path / "cut.jpg")})
    with pytest.raises(ValueError, match="SemanticDatasetMapper"):
        EvalDatasetMapper(cfg, is_train=True)


# ------------------------------------------------------------------------------------------- evaluators
@pytest.fixture()
def tiny_eval_set(tmp_path):
    """A 2-image registered dataset (4 classes, ignore 255) whose label files a test may overwrite."""
    name = "test_image_io_eval_tmp"
    records = []
    for i in range(2):
        image = _save(tmp_path / f"im{i}.png", np.zeros((6, 8, 3), np.uint8))
        label = _save(tmp_path / f"gt{i}.png", np.full((6, 8), i, np.uint8))
        records.append({"file_name": image, "sem_seg_file_name": label})
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(stuff_classes=["a", "b", "c", "d"], ignore_label=255, evaluator_type="sem_seg")
    yield name, records
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _evaluate(name, records, size=(6, 8)):
    evaluator = build_evaluator(None, name)
    evaluator.reset()
    for rec in records:
        scores = torch.zeros(4, *size)
        scores[1] = 1.0
        evaluator.process([{"file_name": rec["file_name"]}], [{"sem_seg": scores}])
    return evaluator.evaluate()


def test_evaluator_accepts_good_ground_truth(tiny_eval_set):
    name, records = tiny_eval_set
    result = _evaluate(name, records)["sem_seg"]
    assert result["IoU-b"] == pytest.approx(50.0) and result["IoU-a"] == 0.0  # all predicted b; GT a and b


@pytest.mark.parametrize("bad, message", [
    (np.zeros((6, 9), np.uint8), r"gt1\.png.*9x6.*im1\.png.*8x6"),
    (np.zeros((6, 8, 3), np.uint8), r"gt1\.png.*RGB"),
    (np.full((6, 8), 4, np.uint8), r"gt1\.png.*id\(s\) 4.*4 classes"),
    (np.full((6, 8), 6, np.uint8), r"gt1\.png.*id\(s\) 6"),  # bincount would put it in a wrong cell
])
def test_evaluator_rejects_bad_ground_truth_by_name(tiny_eval_set, bad, message):
    name, records = tiny_eval_set
    _save(records[1]["sem_seg_file_name"], bad)
    with pytest.raises(GroundTruthError, match=message):
        _evaluate(name, records)


def test_evaluator_names_a_truncated_label(tiny_eval_set):
    name, records = tiny_eval_set
    path = records[0]["sem_seg_file_name"]
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=os.path.basename(path)):
        _evaluate(name, records)
