"""MobileSAM and FastSAM (paper Table 9) behind the common PointPromptedSAM interface, with tiny random models
of their real architectures (ultralytics), plus FastSAM's point selection on hand-built YOLO outputs."""

import atexit
import os
import shutil
import sys
import tempfile

import pytest
import torch

# ultralytics reads these when first imported (lazily, by the first build): keep its settings file out of the
# home directory and keep it off the network. Set at collection time so that it holds for the whole session.
_YOLO_DIR = tempfile.mkdtemp(prefix="sam_mi_ultralytics_")
atexit.register(shutil.rmtree, _YOLO_DIR, True)
os.environ.setdefault("YOLO_CONFIG_DIR", _YOLO_DIR)
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")

from sam_mi.modeling.sam import (
    PointPromptedSAM,
    create_mask_generator,
    build_tiny_sam,
    points_to_input_frame,
)  # noqa: E402
from sam_mi.modeling.sam.mobile_sam import MOBILE_SAM_CHECKPOINT_URL  # noqa: E402
from sam_mi.modeling.sam.fast_sam import (  # noqa: E402
    FAST_SAM_CHECKPOINT_URLS,
    FastSAMPointPrompted,
    pack_yolo_outputs,
    select_masks_by_points,
    unpack_yolo_outputs,
    yolo_nms,
)

H, W = 100, 150
OUT = (40, 60)
PERMISSIVE = dict(pred_iou_thresh=-100.0, stability_score_thresh=0.0, stability_score_offset=1.0)


def _gen(variant, model_type="tiny", checkpoint="", image_size=128, box_nms_thresh=1.0, **thr):
    torch.manual_seed(0)
    kw = dict(PERMISSIVE, **thr)
    return create_mask_generator(variant, model_type=model_type, checkpoint=checkpoint, image_size=image_size,
                                 points_per_batch=16, box_nms_thresh=box_nms_thresh, **kw)


@pytest.fixture(scope="module")
def points():
    return torch.rand(24, 2, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.rand(2, 3, H, W) * 255


def _check_outputs(masks, scores, n_max):
    assert masks.dtype == torch.bool and masks.shape[1:] == OUT
    assert scores.shape == (masks.shape[0],) and 0 < masks.shape[0] <= n_max
    assert (scores[:-1] >= scores[1:]).all()  # sorted by score
    assert masks.flatten(1).any(1).all()  # no empty masks


# ---------------------------------------------------------------------------------------------- MobileSAM
@pytest.fixture(scope="module")
def mobile():
    return _gen("mobile_sam")


def test_mobile_sam_tiny_is_the_real_architecture(mobile, images, points):
    from ultralytics.models.sam.modules.tiny_encoder import TinyViT

    assert isinstance(mobile, PointPromptedSAM) and isinstance(mobile.sam.image_encoder, TinyViT)
    n_params = sum(p.numel() for p in mobile.parameters())
    assert 9.5e6 < n_params < 10.5e6  # Table 9: MobileSAM 10M
    emb = mobile.encode(images)
    assert emb.shape == (2, 256, 8, 8)  # prompt dim 256 at stride 16 of the 128 px input
    assert torch.allclose(emb[1], mobile.encode(images[1:])[0], atol=1e-4)  # batched == single image
    masks, scores = mobile.generate(emb[0], points, (H, W), OUT)
    _check_outputs(masks, scores, 3 * len(points))  # SAM's decoder: 3 candidates per point
    assert not any(p.requires_grad for p in mobile.parameters()) and not mobile.training


def test_mobile_sam_prompts_like_sam(mobile, images):
    """Points reach MobileSAM's prompt encoder exactly as SAM's, and NMS deduplicates repeated points."""
    emb = mobile.encode(images[:1])[0]
    pts = torch.tensor([[0.25, 0.5], [0.9, 0.1]])
    seen = []
    hook = mobile.sam.prompt_encoder.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["points"]), with_kwargs=True
    )
    try:
        once, _ = mobile.generate(emb, pts, (H, W), OUT)
    finally:
        hook.remove()
    coords, labels = seen[0]
    assert (
        torch.allclose(coords[:, 0], points_to_input_frame(pts, (H, W), mobile.input_size(H, W)))
        and (labels == 1).all()
    )
    dedup = _gen("mobile_sam", box_nms_thresh=0.99)
    twice, _ = dedup.generate(emb, torch.cat([pts, pts]), (H, W), OUT)
    assert once.shape[0] > 0 and twice.shape[0] == dedup.generate(emb, pts, (H, W), OUT)[0].shape[0]


def test_mobile_sam_checkpoint_loading(tmp_path):
    from sam_mi.modeling.sam.mobile_sam import build_mobile_sam_model

    torch.manual_seed(3)
    src = build_mobile_sam_model("vit_t", None, 1024)  # random MobileSAM at its official size
    path = tmp_path / "mobile_sam.pt"
    torch.save(src.state_dict(), path)
    gen = _gen("mobile_sam", "vit_t", str(path), image_size=1024)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), gen.sam.state_dict().values()))
    wrong = tmp_path / "sam_tiny.pth"
    torch.save(build_tiny_sam(128).state_dict(), wrong)  # a segment-anything checkpoint is not MobileSAM
    with pytest.raises(ValueError, match="mobile_sam checkpoint"):
        _gen("mobile_sam", "vit_t", str(wrong), image_size=1024)


def test_mobile_sam_bad_arguments_are_clear(tmp_path, monkeypatch):
    for ckpt in ("", str(tmp_path / "missing.pt")):
        with pytest.raises(FileNotFoundError) as e:
            _gen("mobile_sam", "vit_t", ckpt, image_size=1024)
        assert MOBILE_SAM_CHECKPOINT_URL in str(e.value) and "MODEL.SAM_MI.SAM.CHECKPOINT" in str(e.value)
    with pytest.raises(ValueError, match="1024"):
        _gen("mobile_sam", "vit_t", str(tmp_path / "m.pt"), image_size=512)
    with pytest.raises(ValueError, match="'vit_t'"):
        _gen("mobile_sam", "vit_b")
    with pytest.raises(ValueError, match="divisible by 16"):
        _gen("mobile_sam", image_size=120)
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # `import ultralytics` now fails
    with pytest.raises(ImportError, match="pip install .*ultralytics"):
        _gen("mobile_sam")
    with pytest.raises(FileNotFoundError):  # the checkpoint is checked before the package
        _gen("mobile_sam", "vit_t", "", image_size=1024)


# ---------------------------------------------------------------------------------------------- FastSAM
@pytest.fixture(scope="module")
def fast():
    return _gen("fast_sam")


def test_select_masks_by_points_hand_built():
    # 3 points x 4 masks; scores 0.9, 0.5, 0.7, 0.2. Point 0 in masks 0,1; point 1 in 1,2,3; point 2 in none.
    contains = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    scores = torch.tensor([0.9, 0.5, 0.7, 0.2])
    assert select_masks_by_points(contains, scores).tolist() == [True, True, True, True]
    assert select_masks_by_points(contains, scores, max_per_point=1).tolist() == [True, False, True, False]
    assert select_masks_by_points(contains, scores, max_per_point=2).tolist() == [True, True, True, False]
    assert not select_masks_by_points(contains[2:], scores).any()
    assert not select_masks_by_points(contains[:0], scores, max_per_point=1).any()  # no points, no masks
    with pytest.raises(ValueError, match="N_points, M_masks"):
        select_masks_by_points(contains.t(), scores)


def test_pack_unpack_and_nms_match_ultralytics(fast, images):
    from ultralytics.utils.nms import non_max_suppression

    x = fast.preprocess(images)
    with torch.no_grad():
        (preds, protos), _ = fast.sam(x)
    emb = pack_yolo_outputs(preds, protos)
    assert emb.shape == (2, 32 * 64 + 37 * 21, 4, 4)
    assert torch.equal(emb, fast.encode(images))
    p0, q0 = unpack_yolo_outputs(emb[1], fast.num_outputs, fast.num_protos)
    assert torch.equal(p0, preds[1]) and torch.equal(q0, protos[1])  # lossless
    boxes, conf, coef = yolo_nms(preds[0], 1, 0.005, 0.5, max_det=50)
    ref = non_max_suppression(preds[:1], 0.005, 0.5, max_det=50, nc=1)[0]
    assert 0 < len(conf) == len(ref)
    assert torch.allclose(boxes, ref[:, :4], atol=1e-4) and torch.allclose(conf, ref[:, 4])
    assert torch.allclose(coef, ref[:, 6:])


def test_fast_sam_letterbox(fast, images):
    x = fast.preprocess(images)
    h_in, w_in = fast.input_size(H, W)
    assert (h_in, w_in) == (85, 128) and x.shape == (2, 3, 128, 128)
    assert torch.allclose(x[..., h_in:, :], torch.tensor(114 / 255)) and 0 <= x.min() and x.max() <= 1


def test_fast_sam_tiny_end_to_end(fast, images, points):
    emb = fast.encode(images)
    masks, scores = fast.generate(emb[0], points, (H, W), OUT)
    _check_outputs(masks, scores, fast.max_det)
    few, _ = fast.generate(emb[0], points[:3], (H, W), OUT)  # fewer points select a subset of the masks
    assert 0 < few.shape[0] <= masks.shape[0]
    assert (few.flatten(1)[:, None] == masks.flatten(1)[None]).all(-1).any(1).all()
    # At image resolution every returned mask holds a prompt point (up to one pixel of interpolation).
    full, _ = fast.generate(emb[0], points[:3], (H, W), (H, W))
    px = (points[:3] * torch.tensor([W, H])).long().clamp(max=torch.tensor([W - 1, H - 1]))
    grown = torch.nn.functional.max_pool2d(full[:, None].float(), 3, 1, 1)[:, 0] > 0
    assert grown[:, px[:, 1], px[:, 0]].any(1).all()
    strict = _gen("fast_sam", pred_iou_thresh=0.999)  # random confidences are far below 0.999
    m, s = strict.generate(emb[0], points, (H, W), OUT)
    assert m.shape == (0, *OUT) and s.shape == (0,)
    m, s = fast.generate(emb[0], points[:0], (H, W), OUT)
    assert m.shape == (0, *OUT) and s.shape == (0,)
    with pytest.raises(ValueError, match="does not match image_size"):
        fast.generate(torch.zeros(emb.shape[1], 8, 8), points, (H, W), OUT)  # an embedding of a 256 px model


def _synthetic_embedding(fast: FastSAMPointPrompted):
    """YOLO outputs for a 128² frame whose image (64 x 128, H x W) fills the top half. Mask prototypes
    (stride 4): A = x,y < 64 (frame px); B = x,y < 16 (inside A); C's prototype covers x in [80,112),
    y in [16,48) but its box only x in [96,112); D duplicates A's box with a lower confidence."""
    protos = torch.full((32, 32, 32), -8.0)
    protos[0, :16, :16] = 8.0
    protos[1, :4, :4] = 8.0
    protos[2, 4:12, 20:28] = 8.0
    preds = torch.zeros(fast.num_outputs, 21 * 16)
    xywh = {0: (32, 32, 64, 64), 1: (8, 8, 16, 16), 2: (104, 32, 16, 32), 3: (32, 32, 64, 64)}
    conf = {0: 0.9, 1: 0.8, 2: 0.7, 3: 0.6}
    proto_of = {0: 0, 1: 1, 2: 2, 3: 0}
    for a in xywh:
        preds[:4, a] = torch.tensor(xywh[a], dtype=torch.float)
        preds[4, a] = conf[a]
        preds[5 + proto_of[a], a] = 1.0
    return pack_yolo_outputs(preds[None], protos[None])[0]


def test_fast_sam_point_selection_on_hand_built_outputs(fast):
    emb, size, out = _synthetic_embedding(fast), (64, 128), (32, 64)  # out: 2 image pixels per output pixel
    assert fast.input_size(*size) == (64, 128)
    in_b = torch.tensor([[4 / 128, 4 / 64]])  # frame (4, 4): inside B and A
    in_c = torch.tensor([[100 / 128, 30 / 64]])  # frame (100, 30): C's prototype and box
    c_proto_only = torch.tensor([[88 / 128, 30 / 64]])  # frame (88, 30): C's prototype, outside its box
    nowhere = torch.tensor([[70 / 128, 10 / 64]])

    masks, scores = fast.generate(emb, in_b, size, out)
    assert torch.allclose(scores, torch.tensor([0.9, 0.8]))  # A then B; D (A's duplicate) removed by NMS
    expect_a = torch.zeros(out, dtype=torch.bool)
    expect_a[:, :32] = True  # A = the image's left half, full height
    expect_b = torch.zeros(out, dtype=torch.bool)
    expect_b[:8, :8] = True
    assert torch.equal(masks[0], expect_a) and torch.equal(masks[1], expect_b)

    one = FastSAMPointPrompted(fast.sam, 128, max_per_point=1, box_nms_thresh=1.0, **PERMISSIVE)
    assert torch.allclose(one.generate(emb, in_b, size, out)[1], torch.tensor([0.9]))  # most confident only

    masks, scores = fast.generate(emb, in_c, size, out)
    expect_c = torch.zeros(out, dtype=torch.bool)
    expect_c[8:24, 48:56] = True  # box x in [96,112), y in [16,48) (frame px); prototype cropped to it
    assert torch.allclose(scores, torch.tensor([0.7])) and torch.equal(masks[0], expect_c)

    for p in (c_proto_only, nowhere):
        assert fast.generate(emb, p, size, out)[0].shape == (0, *out)
    confident = FastSAMPointPrompted(fast.sam, 128, pred_iou_thresh=0.85, stability_score_thresh=0.0)
    assert torch.allclose(confident.generate(emb, torch.cat([in_b, in_c]), size, out)[1], torch.tensor([0.9]))


def test_fast_sam_checkpoint_loading(tmp_path):
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel

    torch.manual_seed(4)
    src = SegmentationModel("yolov8n-seg.yaml", nc=1, verbose=False)
    path = tmp_path / "FastSAM-s.pt"
    torch.save({"model": src}, path)  # ultralytics' checkpoint layout (a pickled model)
    gen = _gen("fast_sam", "s", str(path), image_size=1024)
    assert isinstance(gen, FastSAMPointPrompted) and gen.num_protos == 32 and gen.num_outputs == 37
    ref = src.eval().fuse(verbose=False)
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), gen.sam.state_dict().values()))
    det = tmp_path / "det.pt"
    torch.save({"model": DetectionModel("yolov8n.yaml", nc=1, verbose=False)}, det)
    with pytest.raises(ValueError, match="not a YOLO segmentation checkpoint"):
        _gen("fast_sam", "x", str(det), image_size=1024)


def test_fast_sam_bad_arguments_are_clear(tmp_path, monkeypatch):
    for t, ckpt in (("x", ""), ("s", str(tmp_path / "missing.pt"))):
        with pytest.raises(FileNotFoundError) as e:
            _gen("fast_sam", t, ckpt, image_size=1024)
        assert (
            FAST_SAM_CHECKPOINT_URLS[t] in str(e.value)
            and f"FastSAM-{t}.pt" in str(e.value)
            and "MODEL.SAM_MI.SAM.CHECKPOINT" in str(e.value)
        )
    with pytest.raises(ValueError, match="'x'"):
        _gen("fast_sam", "vit_h")
    with pytest.raises(ValueError, match="divisible by 32"):
        _gen("fast_sam", image_size=112)
    with pytest.raises(ValueError, match="1024"):
        _gen("fast_sam", "x", "", image_size=640)
    monkeypatch.setitem(sys.modules, "ultralytics", None)
    with pytest.raises(ImportError, match="pip install .*ultralytics"):
        _gen("fast_sam")


def test_every_variant_builds_at_the_tiny_overlay_size(points):
    """configs/tiny/Base-tiny.yaml sets MODEL_TYPE 'tiny', IMAGE_SIZE 128 for every Table 9 row."""
    pytest.importorskip("sam2", reason="optional variant: SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2")
    for variant in ("sam", "hq_sam", "sam2", "mobile_sam", "fast_sam"):
        gen = _gen(variant)
        emb = gen.encode(torch.rand(1, 3, H, W) * 255)
        masks, scores = gen.generate(emb[0], points, (H, W), OUT)
        assert masks.shape[1:] == OUT and scores.shape == (masks.shape[0],), variant
