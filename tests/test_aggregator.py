"""Tests of the CAT-Seg cost aggregation head (sam_mi.modeling.aggregator).

The reference functions (`naive_*`, in catseg_reference.py) re-derive CAT-Seg's computation in its own, memory-hungry style
(guidance repeated per class and concatenated, explicit window loops, explicit attention matrices, padding dropped
after upsampling) so that the memory-saving implementation is checked against it with the same weights.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from sam_mi.modeling.aggregator import Aggregator, cost_volume, select_top_classes
from sam_mi.modeling.layers import (
    ClassTransformerLayer,
    GuidedSwinBlock,
    full_attention,
    full_attention_padded,
    linear_attention,
    linear_attention_padded,
    shifted_window_mask,
    window_partition,
    window_reverse,
)

from catseg_reference import (  # noqa: E402
    TINY,
    expected_catseg_keys,
    naive_aggregator,
    naive_class_layer,
    naive_linear_attention,
    naive_swin_block,
    naive_swin_mask,
    randomise_,
    tiny_inputs,
)


def test_state_dict_matches_catseg_listing_vitb():
    m = Aggregator()
    got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert got == expected_catseg_keys(512)
    # the only buffer is block_2's mask; block_1 has none
    assert [n for n, _ in m.named_buffers()] == [f"layers.{i}.swin_block.block_2.attn_mask" for i in range(2)]


@pytest.mark.parametrize("dim,count", [(512, 2_308_961), (768, 2_636_641)])
def test_parameter_count(dim, count):
    m = Aggregator(text_guidance_dim=dim, appearance_guidance_dim=dim)
    assert sum(p.numel() for p in m.parameters()) == count
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == expected_catseg_keys(dim)


def test_default_size_forward_shape():
    m = Aggregator().eval()
    B, T = 1, 3
    img, text = torch.randn(B, 512, 24, 24), torch.randn(B, T, 1, 512)
    dec = [torch.randn(B, 256, 48, 48), torch.randn(B, 128, 96, 96)]
    with torch.no_grad():
        out = m(img, text, img, dec)
    assert out.shape == (B, T, 96, 96) and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------------------------
# window attention
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("H,W,ws", [(24, 24, 12), (8, 8, 4), (6, 9, 3), (12, 8, 4)])
def test_shift_mask_matches_naive_construction(H, W, ws):
    mask = shifted_window_mask(H, W, ws, ws // 2)
    ref = naive_swin_mask(H, W, ws, ws // 2)
    assert mask.shape == ref.shape == ((H // ws) * (W // ws), ws * ws, ws * ws)
    assert torch.equal(mask, ref)
    assert set(mask.unique().tolist()) == {0.0, -100.0}


def test_window_partition_roundtrip_and_order():
    x = torch.arange(2 * 6 * 9 * 1, dtype=torch.float32).reshape(2, 6, 9, 1)
    w = window_partition(x, 3)
    assert w.shape == (2, 6, 9, 1)
    # second window of image 0 = rows 0..2, cols 3..5 in row-major order
    assert torch.equal(w[0, 1, :, 0], x[0, :3, 3:6, 0].reshape(-1))
    assert torch.equal(window_reverse(w, 3, 6, 9), x)


@pytest.mark.parametrize("shift", [0, 2])
def test_guided_swin_block_matches_naive(shift):
    torch.manual_seed(0)
    blk = GuidedSwinBlock(16, 8, (8, 8), num_heads=2, window_size=4, shift_size=shift)
    randomise_(blk, 1)
    assert (blk.attn_mask is None) == (shift == 0)
    B, T = 2, 3
    x = torch.randn(B, T, 8, 8, 16)
    g = torch.randn(B, 8, 8, 8)
    out = blk(x, g)
    ref = naive_swin_block(blk, x.reshape(B * T, 8, 8, 16), g.repeat_interleave(T, 0)).reshape(B, T, 8, 8, 16)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_window_larger_than_grid_drops_shift():
    blk = GuidedSwinBlock(16, 8, (4, 4), num_heads=2, window_size=6, shift_size=3)
    assert blk.window_size == 4 and blk.shift_size == 0 and blk.attn_mask is None


def test_bad_window_size_raises():
    with pytest.raises(ValueError, match="divisible"):
        GuidedSwinBlock(16, 8, (10, 10), num_heads=2, window_size=4)


# ------------------------------------------------------------------------------------------------------------
# class aggregation
# ------------------------------------------------------------------------------------------------------------
def test_linear_attention_matches_naive():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 7, 2, 5), torch.randn(3, 9, 2, 5), torch.randn(3, 9, 2, 4)
    torch.testing.assert_close(linear_attention(q, k, v), naive_linear_attention(q, k, v), rtol=1e-5, atol=1e-6)
    # eps is added after dividing values by S: a large eps shows the formula is not the plain normalised form
    big = linear_attention(q, k, v, eps=10.0)
    torch.testing.assert_close(big, naive_linear_attention(q, k, v, eps=10.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_pad", [0, 1, 7])
def test_padded_attention_equals_attention_over_the_padded_sequence(n_pad):
    """The padding enters as one key/value pair of multiplicity n_pad (linear: in the sums; softmax: log n_pad)."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 5, 2, 4), torch.randn(3, 5, 2, 4), torch.randn(3, 5, 2, 6)
    k_pad, v_pad = torch.randn(2, 4), torch.randn(2, 6)
    k_full = torch.cat([k, k_pad.expand(3, n_pad, 2, 4)], 1)
    v_full = torch.cat([v, v_pad.expand(3, n_pad, 2, 6)], 1)
    torch.testing.assert_close(
        linear_attention_padded(q, k, v, k_pad, v_pad, n_pad), naive_linear_attention(q, k_full, v_full)
    )
    torch.testing.assert_close(full_attention_padded(q, k, v, k_pad, v_pad, n_pad), full_attention(q, k_full, v_full))


def test_full_attention_matches_softmax():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 7, 2, 5), torch.randn(3, 9, 2, 5), torch.randn(3, 9, 2, 4)
    a = torch.einsum("nlhd,nshd->nlsh", q, k) / math.sqrt(5)
    ref = torch.einsum("nlsh,nshd->nlhd", a.softmax(2), v)
    torch.testing.assert_close(full_attention(q, k, v), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attention_type", ["linear", "full"])
@pytest.mark.parametrize("pool,T", [((2, 2), 5), ((1, 1), 5), ((2, 2), 8)])
def test_class_layer_matches_naive(attention_type, pool, T):
    layer = ClassTransformerLayer(16, 8, nheads=2, attention_type=attention_type, pooling_size=pool, pad_len=8)
    randomise_(layer, 2)
    B = 2
    x = torch.randn(B, T, 8, 8, 16)
    g = torch.randn(B, T, 8)
    out = layer(x, g)
    ref = naive_class_layer(layer, x.permute(0, 4, 1, 2, 3), g).permute(0, 2, 3, 4, 1)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_class_layer_residual_identity():
    """CAT-Seg adds x again after the pooled branch: zero v and MLP-out weights -> 2x (pool 1), x + up(pool x)."""
    layer = ClassTransformerLayer(16, 8, nheads=2, pooling_size=(1, 1), pad_len=8)
    randomise_(layer, 3)
    with torch.no_grad():
        for lin in (layer.attention.v, layer.MLP[2]):
            lin.weight.zero_()
            lin.bias.zero_()
    x, g = torch.randn(2, 5, 8, 8, 16), torch.randn(2, 5, 8)
    torch.testing.assert_close(layer(x, g), 2 * x)
    layer.pooling_size = (2, 2)
    pooled = F.avg_pool2d(x.permute(0, 1, 4, 2, 3).reshape(10, 16, 8, 8), 2)
    up = F.interpolate(pooled, size=(8, 8), mode="bilinear", align_corners=True).reshape(2, 5, 16, 8, 8)
    torch.testing.assert_close(layer(x, g), x + up.permute(0, 1, 3, 4, 2))


def test_set_pooling_size_propagates():
    m = Aggregator(**TINY)
    m.set_pooling_size((1, 1))
    assert all(layer.attention.pooling_size == (1, 1) for layer in m.layers)
    m.pooling_size = [2, 2]
    assert m.pooling_size == (2, 2) and all(layer.attention.pooling_size == (2, 2) for layer in m.layers)
    with pytest.raises(ValueError):
        m.set_pooling_size((0, 2))


# ------------------------------------------------------------------------------------------------------------
# full aggregator
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T,pool,P", [(5, (2, 2), 1), (13, (1, 1), 1), (5, (1, 1), 2)])
def test_aggregator_matches_naive_catseg(T, pool, P):
    m = Aggregator(**{**TINY, "prompt_channel": P})
    randomise_(m, 4)
    m.set_pooling_size(pool)
    inputs = tiny_inputs(2, T, P=P, seed=5)
    out = m(*inputs)
    torch.testing.assert_close(out, naive_aggregator(m, *inputs), rtol=1e-4, atol=1e-4)


def test_even_chunks_cover_the_range():
    from sam_mi.modeling.layers.class_attention import even_chunks

    assert [(c.start, c.stop) for c in even_chunks(20, 16)] == [(0, 10), (10, 20)]
    assert [(c.start, c.stop) for c in even_chunks(5, 16)] == [(0, 5)]
    assert sum(c.stop - c.start for c in even_chunks(171, 16)) == 171 and len(even_chunks(171, 16)) == 11


def test_class_chunks_give_the_same_logits():
    m = Aggregator(**TINY)
    randomise_(m, 4)
    inputs = tiny_inputs(2, 7, seed=3)
    with torch.no_grad():
        m.class_chunk = 0
        whole = m(*inputs)
        m.class_chunk = 3  # chunks of 3, 2 and 2 classes; class attention on 3 * 64 tokens = 27 sequences of 7
        assert all(layer.attention.chunk_tokens == 3 * 64 for layer in m.layers)
        torch.testing.assert_close(m(*inputs), whole, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="class_chunk"):
        Aggregator(**TINY, class_chunk=-1)


def test_output_shape_small_vocabulary():
    m = Aggregator(**TINY)
    out = m(*tiny_inputs(2, 5))
    assert out.shape == (2, 5, 32, 32)
    assert not (out == -100).any()


def test_large_vocabulary_topk_and_fill():
    m = Aggregator(**TINY)
    B, T, K = 2, 13, TINY["pad_len"]
    img, text, app, dec = tiny_inputs(B, T, seed=7)
    with torch.no_grad():
        out = m(img, text, app, dec)
    assert out.shape == (B, T, 32, 32)
    filled = (out == -100).flatten(2).all(-1)  # [B, T] classes entirely at -100
    assert (filled.sum(1) == T - K).all()
    # the kept classes are the K with the highest max cosine over (P, h, w)
    score = torch.einsum("bdhw,btpd->btphw", F.normalize(img, dim=1), F.normalize(text, dim=-1)).flatten(2).amax(-1)
    for b in range(B):
        kept = set(torch.nonzero(~filled[b]).flatten().tolist())
        assert kept == set(score[b].topk(K).indices.tolist())
    assert set(select_top_classes(cost_volume(img, text), K)[0].tolist()) == set(score[0].topk(K).indices.tolist())


def test_gradients_reach_every_parameter():
    m = Aggregator(**TINY)
    randomise_(m, 6)
    img, text, app, dec = tiny_inputs(2, 5, seed=8)
    img.requires_grad_(True)
    app.requires_grad_(True)
    m(img, text, app, dec).square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert img.grad.abs().sum() > 0 and app.grad.abs().sum() > 0


def test_appearance_guidance_is_separate_from_img_feats():
    m = Aggregator(**TINY)
    img, text, app, dec = tiny_inputs(1, 5, seed=9)
    with torch.no_grad():
        a = m(img, text, app, dec)
        b = m(img, text, app + 1.0, dec)
    assert not torch.allclose(a, b)


def test_bad_inputs_raise():
    m = Aggregator(**TINY)
    img, text, app, dec = tiny_inputs(1, 5)
    with pytest.raises(ValueError, match="feature grid"):
        m(*tiny_inputs(1, 5, h=4, w=4))
    with pytest.raises(ValueError, match="appearance_guidance"):
        m(img, text, app[:, :3], dec)
    with pytest.raises(ValueError, match="decoder_guidance"):
        m(img, text, app, dec[::-1])
    with pytest.raises(ValueError, match="prompt_channel"):
        m(img, text.expand(-1, -1, 2, -1), app, dec)


@pytest.mark.parametrize("T", [5, 13])  # padded class attention / top-k branch
def test_no_tensor_is_created_off_the_input_device(T):
    """On the meta device any tensor made without device= (an index, a mask, a bias) would be a CPU tensor and the
    forward would raise: the CPU-side check that the GPU path keeps every tensor on the input's device."""
    m = Aggregator(**TINY).to("meta")
    img, text, app, dec = tiny_inputs(1, T)
    out = m(img.to("meta"), text.to("meta"), app.to("meta"), [d.to("meta") for d in dec])
    assert out.shape == (1, T, 32, 32) and out.device.type == "meta"


def test_training_after_inference_mode_reuses_no_inference_tensor():
    """The aggregator caches its window order: a cache filled under torch.inference_mode (evaluation during
    training) must still serve a training step afterwards."""
    from sam_mi.modeling.layers.swin_blocks import _window_order

    _window_order.cache_clear()
    with torch.inference_mode():
        order, _ = _window_order(6, 6, 3, 1, torch.device("cpu"))
    assert not order.is_inference()
    x = torch.rand(36, requires_grad=True)
    x.index_select(0, order).sum().backward()  # would raise with an inference tensor saved for backward
