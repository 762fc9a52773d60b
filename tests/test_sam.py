"""Tests of the frozen point-prompted SAM (sam_mi/modeling/sam) with tiny random models."""

import numpy as np
import pytest
import torch
from segment_anything.utils.transforms import ResizeLongestSide
from torch import nn

from sam_mi.modeling.sam import (
    SAM_CHECKPOINT_URLS,
    create_mask_generator,
    build_official_architecture,
    build_sam_model,
    build_tiny_sam,
    infer_sam_type,
    load_checkpoint,
    logits_to_out_size,
    points_to_input_frame,
    sam_param_count,
)

H, W = 100, 150  # non-square on purpose: exercises resize-longest-side, padding and the low-res crop
OUT = (40, 60)
PERMISSIVE = dict(pred_iou_thresh=-1e9, stability_score_thresh=0.0, stability_score_offset=1.0)


def _generator(variant="sam", points_per_batch=16, box_nms_thresh=1.0, image_size=128, **thr):
    kw = dict(PERMISSIVE, **thr)
    torch.manual_seed(0)
    return create_mask_generator(variant, model_type="tiny", image_size=image_size,
                                 points_per_batch=points_per_batch, box_nms_thresh=box_nms_thresh, **kw)


@pytest.fixture(scope="module")
def gen():
    return _generator()


@pytest.fixture(scope="module")
def embedding(gen):
    torch.manual_seed(1)
    images = torch.rand(2, 3, H, W) * 255
    return gen.encode(images)


@pytest.fixture(scope="module")
def points():
    return torch.rand(24, 2, generator=torch.Generator().manual_seed(2))


def _same_mask_sets(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Every mask of a has an identical mask in b and vice versa (order-free)."""
    eq = (a.flatten(1)[:, None] == b.flatten(1)[None]).all(-1)
    return bool(eq.any(1).all() and eq.any(0).all())


def test_shapes_and_types(gen, embedding, points):
    assert embedding.shape == (2, 32, 8, 8)  # tiny: 128 px input, patch 16, prompt dim 32
    masks, scores = gen.generate(embedding[0], points, (H, W), OUT)
    assert masks.dtype == torch.bool and masks.shape[1:] == OUT
    assert scores.shape == (masks.shape[0],)
    assert 0 < masks.shape[0] <= 3 * len(points)  # 3 multimask candidates per point at most
    assert (scores[:-1] >= scores[1:]).all()  # sorted by predicted IoU (NMS order)
    assert masks.flatten(1).any(1).all()  # no empty masks


def test_encode_is_batched_like_single_images(gen):
    torch.manual_seed(3)
    images = torch.rand(2, 3, H, W) * 255
    both = gen.encode(images)
    assert torch.allclose(both[1], gen.encode(images[1:])[0], atol=1e-4)


def test_chunking_matches_one_big_chunk(embedding, points):
    small = _generator(points_per_batch=5, box_nms_thresh=0.9)
    big = _generator(points_per_batch=1000, box_nms_thresh=0.9)
    m1, s1 = small.generate(embedding[0], points, (H, W), OUT)
    m2, s2 = big.generate(embedding[0], points, (H, W), OUT)
    assert m1.shape == m2.shape and m1.shape[0] > 0
    assert torch.allclose(s1.sort().values, s2.sort().values, atol=1e-5)
    assert _same_mask_sets(m1, m2)


def test_thresholds_and_empty_results(embedding, points):
    permissive = _generator()
    masks, _ = permissive.generate(embedding[0], points, (H, W), OUT)
    assert masks.shape[0] > 0
    # Predicted IoU of a random model never reaches 0.999: nothing survives, shapes stay well formed.
    strict = _generator(pred_iou_thresh=0.999, stability_score_thresh=0.99)
    masks, scores = strict.generate(embedding[0], points, (H, W), OUT)
    assert masks.shape == (0, *OUT) and masks.dtype == torch.bool and scores.shape == (0,)
    masks, scores = permissive.generate(embedding[0], torch.zeros(0, 2), (H, W), OUT)
    assert masks.shape == (0, *OUT) and scores.shape == (0,)


def test_stability_threshold_filters(embedding, points):
    n_all = _generator().generate(embedding[0], points, (H, W), OUT)[0].shape[0]
    n_stable = _generator(stability_score_thresh=0.9).generate(embedding[0], points, (H, W), OUT)[0].shape[0]
    assert n_stable < n_all


def test_nms_removes_duplicate_points(embedding, points):
    few = points[:6]
    twice = torch.cat([few, few])
    no_nms = _generator(box_nms_thresh=1.0)  # IoU > 1 never happens: identical boxes both kept
    nms = _generator(box_nms_thresh=0.99)
    n_once = nms.generate(embedding[0], few, (H, W), OUT)[0].shape[0]
    assert (
        no_nms.generate(embedding[0], twice, (H, W), OUT)[0].shape[0]
        == 2 * no_nms.generate(embedding[0], few, (H, W), OUT)[0].shape[0]
    )
    masks, _ = nms.generate(embedding[0], twice, (H, W), OUT)
    assert masks.shape[0] == n_once > 0
    flat = masks.flatten(1)
    same = (flat[:, None] == flat[None]).all(-1)
    assert same.sum() == masks.shape[0]  # only the diagonal: no duplicate masks


def test_points_land_where_sam_puts_them(gen, embedding):
    pts = torch.tensor([[0.25, 0.5], [0.9, 0.1], [0.0, 1.0]])
    pix = np.stack([pts[:, 0].numpy() * W, pts[:, 1].numpy() * H], -1)
    expected = ResizeLongestSide(gen.image_size).apply_coords(pix, (H, W))
    assert np.allclose(points_to_input_frame(pts, (H, W), gen.input_size(H, W)).numpy(), expected, atol=1e-4)
    # ...and these are the coordinates the prompt encoder receives (one positive point per prompt).
    seen = []
    hook = gen.sam.prompt_encoder.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["points"]), with_kwargs=True
    )
    try:
        gen.generate(embedding[0], pts, (H, W), OUT)
    finally:
        hook.remove()
    coords, labels = seen[0]
    assert coords.shape == (3, 1, 2) and (labels == 1).all()
    assert np.allclose(coords[:, 0].numpy(), expected, atol=1e-4)


def test_masks_match_sam_postprocessing(gen, embedding):
    """One bilinear resample of the low-res logits matches SAM's own postprocess_masks (upsample to the padded
    frame, un-pad, resize) pixel for pixel up to interpolation error, and generate's masks are exactly it > 0."""
    pt = torch.tensor([[0.4, 0.6]])
    size_in = gen.input_size(H, W)
    coords = points_to_input_frame(pt, (H, W), size_in)[:, None]
    with torch.no_grad():
        low, iou = gen._decode(embedding[:1], coords, torch.ones(1, 1, dtype=torch.int))
        ref = gen.sam.postprocess_masks(low, size_in, (H, W))[0]
    frame = (gen.image_size, gen.image_size)
    ours = logits_to_out_size(low[0], size_in, frame, (H, W))
    err = (ours - ref).abs().mean()
    assert err < 0.05 * ref.abs().mean()
    assert (ours[:, 1:] - ref[:, :-1]).abs().mean() > 3 * err  # a one-pixel shift is clearly worse
    masks, scores = gen.generate(embedding[0], pt, (H, W), (H, W))
    assert masks.shape[0] > 0
    for m, s in zip(masks, scores):
        assert torch.equal(m, ours[(iou[0] - s).abs().argmin()] > 0)


def test_frozen_and_eval_inside_training_parent(gen, embedding):
    parent = nn.Module()
    parent.sam = gen
    parent.head = nn.Linear(2, 2)
    parent.train()
    assert parent.head.training and not gen.training
    assert not any(m.training for m in gen.modules())
    assert not any(p.requires_grad for p in gen.parameters())
    assert not embedding.requires_grad


def test_missing_checkpoint_names_url_and_key(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        create_mask_generator("sam", model_type="vit_b", checkpoint=str(tmp_path / "nope.pth"), image_size=1024)
    assert SAM_CHECKPOINT_URLS["vit_b"] in str(e.value) and "MODEL.SAM_MI.SAM.CHECKPOINT" in str(e.value)
    with pytest.raises(FileNotFoundError, match="MODEL.SAM_MI.SAM.CHECKPOINT"):
        build_sam_model("vit_h", "")


def test_wrong_checkpoint_type_is_a_clear_error(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(build_tiny_sam(128).state_dict(), path)
    with pytest.raises(ValueError, match="looks like a 'tiny'"):
        build_sam_model("vit_b", str(path))
    # A vit_h-shaped encoder loaded into another type is named as vit_h.
    fake = tmp_path / "h.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1, 4, 4, 1280)}, fake)
    with pytest.raises(ValueError, match="'vit_h'"):
        load_checkpoint(build_tiny_sam(128), str(fake), "tiny")
    # Keys of some other model: still a ValueError, not a raw state-dict trace.
    other = tmp_path / "other.pth"
    torch.save({"model": {"backbone.weight": torch.zeros(3)}}, other)
    with pytest.raises(ValueError, match="missing keys"):
        load_checkpoint(build_tiny_sam(128), str(other), "tiny")


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(5)
    src = build_tiny_sam(128)
    path = tmp_path / "tiny.pth"
    torch.save(src.state_dict(), path)
    torch.manual_seed(6)
    dst = build_tiny_sam(128)
    load_checkpoint(dst, str(path), "tiny")
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    assert infer_sam_type(src.state_dict()) == "tiny"


def test_official_architectures_match_segment_anything():
    """SAM_ARCHS (our builder, any image size) builds what segment-anything's own registry builds at 1024."""
    from segment_anything import sam_model_registry

    ours = build_official_architecture("vit_b").state_dict()
    theirs = sam_model_registry["vit_b"](checkpoint=None).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    small = build_sam_model("vit_b", checkpoint="", image_size=256, random_init=True)
    assert small.image_encoder.pos_embed.shape == (1, 16, 16, 768)


def test_param_counts():
    tiny = sam_param_count("tiny")
    assert tiny["total"] == tiny["image_encoder"] + tiny["prompt_encoder"] + tiny["mask_decoder"] > 0
    vit_b = sam_param_count("vit_b")  # segment-anything's ViT-B: 93.74M total, 89.67M encoder
    assert abs(vit_b["total"] / 1e6 - 93.74) < 0.01 and abs(vit_b["image_encoder"] / 1e6 - 89.67) < 0.01


def test_hq_sam_one_candidate_per_point(points):
    hq = _generator("hq_sam")
    torch.manual_seed(1)
    emb = hq.encode(torch.rand(1, 3, H, W) * 255)
    assert emb.shape == (1, 32 + 32, 8, 8)  # SAM embedding + early ViT feature (packed)
    masks, scores = hq.generate(emb[0], points, (H, W), OUT)
    assert 0 < masks.shape[0] <= len(points) and scores.shape == (masks.shape[0],)
    assert not any(p.requires_grad for p in hq.parameters())


def test_sam2_tiny(points):
    pytest.importorskip("sam2", reason="optional variant: SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2")
    s2 = _generator("sam2", image_size=256)
    torch.manual_seed(1)
    emb = s2.encode(torch.rand(1, 3, H, W) * 255)
    assert emb.shape == (1, 256 + 32 * 16 + 64 * 4, 16, 16)  # embedding + pixel-unshuffled high-res maps
    masks, scores = s2.generate(emb[0], points, (H, W), OUT)
    assert 0 < masks.shape[0] <= 3 * len(points) and masks.shape[1:] == OUT
    one_chunk = _generator("sam2", image_size=256, points_per_batch=1000)
    assert _same_mask_sets(masks, one_chunk.generate(emb[0], points, (H, W), OUT)[0])


def test_missing_optional_package_names_pip_package(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "segment_anything_hq", None)  # makes `import segment_anything_hq` fail
    with pytest.raises(ImportError, match="pip install segment-anything-hq"):
        create_mask_generator("hq_sam", model_type="tiny", checkpoint="", image_size=128)


def test_variants_without_weights_explain_themselves(tmp_path):
    with pytest.raises(FileNotFoundError, match="FastSAM-x.pt"):
        create_mask_generator("fast_sam", model_type="x", checkpoint="", image_size=1024)
    with pytest.raises(FileNotFoundError, match="mobile_sam.pt"):
        create_mask_generator("mobile_sam", model_type="vit_t", checkpoint=str(tmp_path / "m.pt"), image_size=1024)
    with pytest.raises(ValueError, match="unknown SAM variant"):
        create_mask_generator("sam3", model_type="tiny", checkpoint="", image_size=128)


def test_a_file_that_is_not_a_checkpoint_names_file_and_key(tmp_path):
    from sam_mi.utils.checkpoint_io import CheckpointFileError

    bad = tmp_path / "sam_vit_b.pth"
    bad.write_text("<html>404 Not Found</html>")
    with pytest.raises(CheckpointFileError) as e:
        load_checkpoint(build_tiny_sam(128), str(bad), "tiny")
    message = str(e.value)
    assert str(bad) in message and "MODEL.SAM_MI.SAM.CHECKPOINT" in message and "weights_only" not in message
