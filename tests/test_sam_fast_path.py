"""SAM fast paths against segment-anything's own forward (sam_mi/modeling/sam/fast_attention.py, fast_decoder.py).

The encoder test pins the behaviour of segment-anything's `image_encoder.Attention`: ViT-B's width, depth, heads
and global-attention blocks at a reduced input (256: a 16x16 grid, 14x14 windows with padding), random weights
and non-zero relative-position tables. Run it after upgrading segment-anything.
"""

import pytest
import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from segment_anything.modeling.image_encoder import Attention

from sam_mi.modeling.sam import PointPromptedSAM, build_official_architecture, build_tiny_sam
from sam_mi.modeling.sam.fast_attention import amp_dtype, apply_sam_fast_path, remove_sam_fast_path
from sam_mi.modeling.sam.fast_decoder import FastPointDecoder, check_fast_decoder
from sam_mi.modeling.sam.point_decoder import resize_longest_side_shape, select_candidates

PERMISSIVE = dict(pred_iou_thresh=-1e9, stability_score_thresh=0.0, stability_score_offset=1.0, box_nms_thresh=1.0)


def _mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


@pytest.fixture(scope="module")
def vit_b_256():
    """vit_b at input 256 with random weights and random relative-position tables (zero by default)."""
    torch.manual_seed(0)
    sam = build_official_architecture("vit_b", 256).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in sam.image_encoder.named_parameters():
            if "rel_pos" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    image = torch.rand(1, 3, 192, 256, generator=g) * 255  # 4:3, padded at the bottom
    gen = PointPromptedSAM(sam, 256, masks_per_point="amg", **PERMISSIVE)
    reference = gen.encode(image)  # segment-anything's own attention
    assert apply_sam_fast_path(sam, sdpa=True) == 12  # every block, windowed and global
    yield gen, image, reference
    remove_sam_fast_path(sam)


def test_sdpa_encoder_matches_segment_anything(vit_b_256):
    gen, image, reference = vit_b_256
    assert all(type(b.attn).__name__ == "SDPAAttention" for b in gen.sam.image_encoder.blocks)
    fast = gen.encode(image)
    assert fast.dtype == torch.float32
    assert (fast - reference).abs().max() < 1e-4  # measured 4e-6 (|embedding| up to ~4.5)
    points = torch.rand(24, 2, generator=torch.Generator().manual_seed(2))
    a, _ = gen.generate(reference[0], points, image.shape[-2:], image.shape[-2:])
    b, _ = gen.generate(fast[0], points, image.shape[-2:], image.shape[-2:])
    assert a.shape == b.shape and a.shape[0] > 0
    assert _mask_iou(a, b).mean() > 0.999


def test_autocast_encoder_is_close_and_float32(vit_b_256):
    gen, image, reference = vit_b_256
    gen.amp = True
    try:
        emb = gen.encode(image)
    finally:
        gen.amp = False
    assert emb.dtype == torch.float32
    err = (emb - reference).abs()
    assert 0 < err.max() < 0.05 * reference.abs().max()  # bf16: ~1e-2 of the range (measured 4.8e-2 / 4.5)
    assert err.mean() < 0.01 * reference.abs().mean()


def test_amp_dtype_by_device(monkeypatch):
    assert amp_dtype(torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert amp_dtype(torch.device("cuda")) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp_dtype(torch.device("cuda", 0)) == torch.bfloat16
    assert amp_dtype(torch.device("meta")) is None


def test_fast_path_switch_and_removal():
    sam = build_tiny_sam(128)
    assert apply_sam_fast_path(sam, sdpa=False) == 0
    assert all(type(m) is Attention for m in sam.modules() if isinstance(m, Attention))
    assert apply_sam_fast_path(sam, sdpa=True) == 2
    assert apply_sam_fast_path(sam, sdpa=True) == 2  # idempotent
    assert set(sam.state_dict()) == set(build_tiny_sam(128).state_dict())  # keys untouched
    assert remove_sam_fast_path(sam) == 2
    assert all(type(m) is Attention for m in sam.modules() if isinstance(m, Attention))


def test_changed_segment_anything_attention_is_refused(monkeypatch):
    """A release whose Attention computes something else fails at build time, naming the switch."""
    original = Attention.forward
    monkeypatch.setattr(Attention, "forward", lambda self, x: original(self, x) * 1.01)
    with pytest.raises(ValueError, match="MODEL.SAM_MI.SAM.SDPA"):
        apply_sam_fast_path(build_tiny_sam(128), sdpa=True)


# ------------------------------------------------------------------------------------------------ decoder
@pytest.fixture(scope="module")
def vit_decoder():
    """SAM's decoder at its real size (the same for every SAM type: 256 wide, depth 2, 8 heads) on a 16x16 grid."""
    torch.manual_seed(3)
    prompt = PromptEncoder(embed_dim=256, image_embedding_size=(16, 16), input_image_size=(256, 256), mask_in_chans=16)
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    ).eval()
    return prompt, decoder


def test_fast_decoder_matches_mask_decoder(vit_decoder):
    prompt, decoder = vit_decoder
    g = torch.Generator().manual_seed(4)
    emb = torch.randn(1, 256, 16, 16, generator=g)
    coords = torch.rand(9, 1, 2, generator=g) * 256
    labels = torch.ones(9, 1, dtype=torch.int)
    with torch.no_grad():
        sparse, dense = prompt(points=(coords, labels), boxes=None, masks=None)
        pe = prompt.get_dense_pe()
        ref_masks, ref_iou = decoder.predict_masks(emb, pe, sparse, dense)
        fast = FastPointDecoder(decoder)
        state = fast.prepare(emb, pe, dense[:1])
        masks, iou = fast(state, sparse)
        assert masks.shape == ref_masks.shape == (9, 4, 64, 64)
        assert (masks - ref_masks).abs().max() < 1e-4 * max(1.0, ref_masks.abs().max().item())
        assert (iou - ref_iou).abs().max() < 1e-5
        # the selections return only what they keep; a region returns the top-left part of the same logits
        best, best_iou = fast(state, sparse, "best", region=(5, 7))
        idx = ref_iou[:, 1:].argmax(1) + 1
        assert best.shape == (9, 20, 28)
        assert torch.allclose(best, ref_masks[torch.arange(9), idx, :20, :28], atol=1e-4)
        assert torch.allclose(best_iou, ref_iou[torch.arange(9), idx], atol=1e-5)
        single, _ = fast(state, sparse, "single")
        assert torch.allclose(single, ref_masks[:, 0], atol=1e-4)
        amg, amg_iou = fast(state, sparse, "amg")
        assert torch.allclose(amg, ref_masks[:, 1:].flatten(0, 1), atol=1e-4) and amg_iou.shape == (27,)
    assert check_fast_decoder(decoder, prompt) < 1e-4


def test_cpu_sub_batches_give_the_same_masks(vit_decoder, monkeypatch):
    """On the CPU the prompts go through in passes sized by `cpu_batch_bytes` (fast_decoder.py, item 5): the
    number of passes follows the budget, and every selection returns what one pass over all prompts returns."""
    prompt, decoder = vit_decoder
    g = torch.Generator().manual_seed(5)
    emb = torch.randn(1, 256, 16, 16, generator=g)
    coords = torch.rand(9, 1, 2, generator=g) * 256
    labels = torch.ones(9, 1, dtype=torch.int)
    per_prompt = 16 * 16 * 256 * 4  # one prompt's image tokens, fp32
    whole = FastPointDecoder(decoder, cpu_batch_bytes=0)
    split = FastPointDecoder(decoder, cpu_batch_bytes=2 * per_prompt + 1)
    passes = []
    original = FastPointDecoder._decode_prompts

    def counted(self, state, sparse, *args):
        passes.append(sparse.shape[0])
        return original(self, state, sparse, *args)

    monkeypatch.setattr(FastPointDecoder, "_decode_prompts", counted)
    with torch.no_grad():
        sparse, dense = prompt(points=(coords, labels), boxes=None, masks=None)
        pe = prompt.get_dense_pe()
        state = whole.prepare(emb, pe, dense[:1])
        assert split.prompts_per_pass(state, 9) == 2 and whole.prompts_per_pass(state, 9) == 9
        assert FastPointDecoder(decoder).prompts_per_pass(state, 64) == 32  # the 8 MiB default
        for select in ("all", "amg", "best", "single"):
            passes.clear()
            ref_masks, ref_iou = whole(state, sparse, select, region=(5, 7))
            assert passes == [9]
            passes.clear()
            masks, iou = split(state, sparse, select, region=(5, 7))
            assert passes == [2, 2, 2, 2, 1]
            assert masks.shape == ref_masks.shape and iou.shape == ref_iou.shape
            assert torch.allclose(masks, ref_masks, atol=1e-4) and torch.allclose(iou, ref_iou, atol=1e-5)
    with pytest.raises(ValueError, match="cpu_batch_bytes"):
        FastPointDecoder(decoder, cpu_batch_bytes=-1)


def test_changed_mask_decoder_is_refused(vit_decoder, monkeypatch):
    prompt, decoder = vit_decoder
    original = MaskDecoder.predict_masks
    monkeypatch.setattr(
        MaskDecoder, "predict_masks", lambda self, *a, **k: tuple(t * 1.01 for t in original(self, *a, **k))
    )
    with pytest.raises(ValueError, match="MODEL.SAM_MI.SAM.FAST_DECODER"):
        check_fast_decoder(decoder, prompt)


@pytest.mark.parametrize("mode", ["best", "single", "amg"])
def test_generate_fast_equals_reference_path(mode):
    """Same masks and scores with and without the fast decoder, on a non-square image (cropped region)."""
    torch.manual_seed(0)
    sam = build_tiny_sam(128)
    fast = PointPromptedSAM(sam, 128, points_per_batch=7, masks_per_point=mode, **PERMISSIVE)
    slow = PointPromptedSAM(sam, 128, points_per_batch=7, masks_per_point=mode, fast_decoder=False, **PERMISSIVE)
    assert fast._fast is not None and slow._fast is None
    g = torch.Generator().manual_seed(5)
    image = torch.rand(1, 3, 60, 150, generator=g) * 255
    emb = fast.encode(image)[0]
    points = torch.rand(20, 2, generator=g)
    m1, s1 = fast.generate(emb, points, (60, 150), (60, 150))
    m2, s2 = slow.generate(emb, points, (60, 150), (60, 150))
    per_point = 3 if mode == "amg" else 1
    assert m1.shape == m2.shape and 0 < m1.shape[0] <= per_point * 20
    assert torch.allclose(s1, s2, atol=1e-5)
    assert _mask_iou(m1, m2).min() > 0.99


def test_best_mask_is_the_highest_predicted_iou():
    logits = torch.randn(4, 3, 5, 5)
    iou = torch.tensor([[0.1, 0.9, 0.3], [0.5, 0.2, 0.1], [0.2, 0.2, 0.7], [0.0, 0.0, 0.0]])
    kept, kept_iou = select_candidates(logits, iou, "best")
    assert torch.equal(kept_iou, torch.tensor([0.9, 0.5, 0.7, 0.0]))
    assert torch.equal(kept, logits[torch.arange(4), torch.tensor([1, 0, 2, 0])])  # ties: the first
    all_, _ = select_candidates(logits, iou, "amg")
    assert all_.shape == (12, 5, 5)
    with pytest.raises(ValueError, match="single-output"):
        select_candidates(logits, iou, "single")
    with pytest.raises(ValueError, match="MODEL.SAM_MI.SAM.MASKS_PER_POINT"):
        PointPromptedSAM(build_tiny_sam(128), 128, masks_per_point="three")


def test_single_mode_uses_the_single_output_token():
    torch.manual_seed(0)
    sam = build_tiny_sam(128)
    gen = PointPromptedSAM(sam, 128, masks_per_point="single", fast_decoder=False, **PERMISSIVE)
    emb = gen.encode(torch.rand(1, 3, 128, 128) * 255)
    coords = torch.tensor([[[40.0, 60.0]]])
    with torch.no_grad():
        logits, iou = gen._decode(emb, coords, torch.ones(1, 1, dtype=torch.int))
        sparse, dense = sam.prompt_encoder(points=(coords, torch.ones(1, 1, dtype=torch.int)), boxes=None, masks=None)
        ref, ref_iou = sam.mask_decoder.predict_masks(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense)
    assert logits.shape[1] == 1 and torch.allclose(logits[:, 0], ref[:, 0]) and torch.allclose(iou[:, 0], ref_iou[:, 0])


# ------------------------------------------------------------------------------------------------ geometry
def test_extreme_aspect_ratios_never_resize_to_zero():
    assert resize_longest_side_shape(10000, 30, 1024) == (1024, 3)
    assert resize_longest_side_shape(100000, 30, 1024) == (1024, 1)  # SAM's formula gives 0 here
    assert resize_longest_side_shape(30, 100000, 1024) == (1, 1024)
    with pytest.raises(ValueError, match="positive"):
        resize_longest_side_shape(0, 10, 1024)
    torch.manual_seed(0)
    gen = PointPromptedSAM(build_tiny_sam(128), 128, **PERMISSIVE)
    image = torch.rand(1, 3, 2000, 3) * 255  # 2000x3 at 128 -> 128 x 0.19: clamped to 1 column
    assert gen.input_size(2000, 3) == (128, 1)
    emb = gen.encode(image)
    assert torch.isfinite(emb).all()
    masks, scores = gen.generate(emb[0], torch.tensor([[0.5, 0.5], [0.2, 0.9]]), (2000, 3), (250, 3))
    assert masks.shape[1:] == (250, 3) and scores.shape == (masks.shape[0],)


def test_hq_sam_encoder_is_patched_too():
    pytest.importorskip("segment_anything_hq", reason="optional variant: pip install segment-anything-hq")
    import segment_anything_hq

    torch.manual_seed(0)
    hq = build_tiny_sam(128, sam_module=segment_anything_hq, hq=True)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ref, _ = hq.image_encoder(x)
        assert apply_sam_fast_path(hq, sdpa=True) == 2
        out, _ = hq.image_encoder(x)
    assert (out - ref).abs().max() < 1e-5


def test_fast_paths_create_no_tensor_off_the_model_device():
    """On the meta device a tensor made without device= would be a CPU tensor and raise (GPU safety, on a CPU)."""
    torch.manual_seed(0)
    sam = build_tiny_sam(128)
    apply_sam_fast_path(sam, sdpa=True)
    fast = FastPointDecoder(sam.mask_decoder)
    coords, labels = torch.rand(3, 1, 2) * 128, torch.ones(3, 1, dtype=torch.int)
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        pe = sam.prompt_encoder.get_dense_pe()
        sam.to("meta")
        assert sam.image_encoder(torch.randn(1, 3, 128, 128, device="meta")).shape == (1, 32, 8, 8)
        state = fast.prepare(torch.randn(1, 32, 8, 8, device="meta"), pe.to("meta"), dense[:1].to("meta"))
        for select, n in (("all", 3), ("amg", 9), ("best", 3), ("single", 3)):
            masks, iou = fast(state, sparse.to("meta"), select, region=(5, 7))
            assert masks.device.type == "meta" and masks.shape[0] == n and masks.shape[-2:] == (20, 28)
