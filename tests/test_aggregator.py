"""Tests of the CAT-Seg cost aggregation head (sam_mi.modeling.aggregator).

The reference functions below (`naive_*`) re-derive CAT-Seg's computation in its own, memory-hungry style
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
    LinearAttention,
    full_attention,
    linear_attention,
    shifted_window_mask,
    window_partition,
    window_reverse,
)

TINY = dict(
    text_guidance_dim=12,
    text_guidance_proj_dim=8,
    appearance_guidance_dim=10,
    appearance_guidance_proj_dim=8,
    decoder_dims=(16, 16),
    decoder_guidance_dims=(6, 5),
    decoder_guidance_proj_dims=(4, 4),
    num_layers=2,
    nheads=2,
    hidden_dim=16,
    pooling_size=(2, 2),
    feature_resolution=(8, 8),
    window_size=4,
    attention_type="linear",
    prompt_channel=1,
    pad_len=8,
)


def tiny_inputs(B: int, T: int, P: int = 1, seed: int = 0, h: int = 8, w: int = 8):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(B, 12, h, w, generator=g)
    text = torch.randn(B, T, P, 12, generator=g)
    app = torch.randn(B, 10, h, w, generator=g)
    dec = [torch.randn(B, 6, 2 * h, 2 * w, generator=g), torch.randn(B, 5, 4 * h, 4 * w, generator=g)]
    return img, text, app, dec


def randomise_(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial values for every parameter (padding tokens start at zero, norms at identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 / math.sqrt(max(1, p[0].numel() if p.dim() > 1 else 1))))


# ------------------------------------------------------------------------------------------------------------
# naive CAT-Seg-style references
# ------------------------------------------------------------------------------------------------------------
def naive_swin_mask(H: int, W: int, ws: int, s: int) -> torch.Tensor:
    """Swin's original construction: fill 3x3 slice regions with counters, partition, compare."""
    img_mask = torch.zeros(1, H, W, 1)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
        for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
            img_mask[:, hs, wsl, :] = cnt
            cnt += 1
    wins = []
    for i in range(H // ws):
        for j in range(W // ws):
            wins.append(img_mask[0, i * ws : (i + 1) * ws, j * ws : (j + 1) * ws, 0].reshape(-1))
    mw = torch.stack(wins)  # [nW, N]
    diff = mw.unsqueeze(1) - mw.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def naive_swin_block(blk: GuidedSwinBlock, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """x [BT, H, W, C], g [BT, H, W, Cg] (already normalised and repeated per class)."""
    BT, H, W, C = x.shape
    ws, s, nh = blk.window_size, blk.shift_size, blk.attn.num_heads
    shortcut = x
    cat = torch.cat([blk.norm1(x), g], dim=-1)
    if s > 0:
        cat = torch.roll(cat, (-s, -s), (1, 2))
    out = torch.zeros(BT, H, W, C)
    widx = 0
    for i in range(H // ws):
        for j in range(W // ws):
            tok = cat[:, i * ws : (i + 1) * ws, j * ws : (j + 1) * ws].reshape(BT, ws * ws, -1)
            q = blk.attn.q(tok).reshape(BT, -1, nh, C // nh).transpose(1, 2)
            k = blk.attn.k(tok).reshape(BT, -1, nh, C // nh).transpose(1, 2)
            v = blk.attn.v(tok[..., :C]).reshape(BT, -1, nh, C // nh).transpose(1, 2)
            a = (q * (C // nh) ** -0.5) @ k.transpose(-1, -2)
            if blk.attn_mask is not None:
                a = a + blk.attn_mask[widx]
            o = (a.softmax(-1) @ v).transpose(1, 2).reshape(BT, ws * ws, C)
            out[:, i * ws : (i + 1) * ws, j * ws : (j + 1) * ws] = blk.attn.proj(o).reshape(BT, ws, ws, C)
            widx += 1
    if s > 0:
        out = torch.roll(out, (s, s), (1, 2))
    x = shortcut + out
    return x + blk.mlp(blk.norm2(x))


def naive_linear_attention(q, k, v, eps=1e-6):
    """O(L*S) form: explicit kernel matrix A[l, s] = phi(q_l) . phi(k_s)."""
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    S = v.shape[1]
    a = torch.einsum("nlhd,nshd->nhls", fq, fk)
    num = torch.einsum("nhls,nshv->nlhv", a, v / S)
    den = a.sum(-1).permute(0, 2, 1)[..., None] + eps  # [n, l, h, 1]
    return num / den * S


def naive_class_layer(layer: ClassTransformerLayer, x: torch.Tensor, guid: torch.Tensor) -> torch.Tensor:
    """CAT-Seg order: x [B,C,T,H,W]; pad, repeat guidance per pooled pixel, concat, upsample, then drop padding."""
    B, C, T, H, W = x.shape
    ph, pw = layer.pooling_size
    xp = F.avg_pool2d(x.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W), (ph, pw))
    Hp, Wp = xp.shape[-2:]
    xp = xp.reshape(B, T, C, Hp, Wp).permute(0, 2, 1, 3, 4)
    if T < layer.pad_len:
        pad = layer.padding_tokens.reshape(1, C, 1, 1, 1).expand(B, C, layer.pad_len - T, Hp, Wp)
        xp = torch.cat([xp, pad], 2)
        guid = torch.cat([guid, layer.padding_guidance.expand(B, layer.pad_len - T, -1)], 1)
    L = xp.shape[2]
    seq = xp.permute(0, 3, 4, 2, 1).reshape(B * Hp * Wp, L, C)
    g = guid.repeat_interleave(Hp * Wp, dim=0)
    att = layer.attention
    xn = layer.norm1(seq)
    nh = att.nheads
    q = att.q(torch.cat([xn, g], -1)).reshape(-1, L, nh, C // nh)
    k = att.k(torch.cat([xn, g], -1)).reshape(-1, L, nh, C // nh)
    v = att.v(xn).reshape(-1, L, nh, C // nh)
    if isinstance(att.attention, LinearAttention):
        o = naive_linear_attention(q, k, v)
    else:
        a = torch.einsum("nlhd,nshd->nlsh", q, k) / math.sqrt(C // nh)
        o = torch.einsum("nlsh,nshd->nlhd", a.softmax(2), v)
    seq = seq + o.reshape(-1, L, C)
    seq = seq + layer.MLP(layer.norm2(seq))
    up = seq.reshape(B, Hp, Wp, L, C).permute(0, 3, 4, 1, 2).reshape(B * L, C, Hp, Wp)
    up = F.interpolate(up, size=(H, W), mode="bilinear", align_corners=True)
    up = up.reshape(B, L, C, H, W).permute(0, 2, 1, 3, 4)[:, :, :T]
    return x + up


def naive_up(up, x, g):
    x = up.up(x)
    T = x.shape[0] // g.shape[0]
    return up.conv(torch.cat([x, g.repeat_interleave(T, dim=0)], 1))


def naive_aggregator(m: Aggregator, img, text, app, dec):
    """CAT-Seg's Aggregator.forward written out (re-computed cost on gathered text, -100 scatter)."""
    B, T = text.shape[:2]
    H, W = img.shape[-2:]
    corr = torch.einsum("bchw,btpc->bpthw", F.normalize(img, dim=1), F.normalize(text, dim=-1))
    classes = None
    if T > m.pad_len:
        score = corr.permute(0, 2, 1, 3, 4).flatten(-3).max(-1)[0]
        classes = score.topk(m.pad_len, dim=-1, sorted=False)[1]
        tn = F.normalize(text, dim=-1)
        text = torch.gather(tn, 1, classes[..., None, None].expand(-1, -1, tn.shape[2], tn.shape[3]))
        corr = torch.einsum("bchw,btpc->bpthw", F.normalize(img, dim=1), text)
    Tk = corr.shape[2]
    x = m.conv1(corr.permute(0, 2, 1, 3, 4).reshape(B * Tk, -1, H, W))
    x = x.reshape(B, Tk, -1, H, W).permute(0, 2, 1, 3, 4)  # B C T H W
    ag = m.guidance_projection(app)
    dg = [p(d) for p, d in zip(m.decoder_guidance_projection, dec)]
    tg = text.mean(-2)
    tg = m.text_guidance_projection(tg / tg.norm(dim=-1, keepdim=True))
    C = x.shape[1]
    for layer in m.layers:
        sw = layer.swin_block
        g = sw.guidance_norm(ag.permute(0, 2, 3, 1)).repeat_interleave(Tk, 0)
        y = x.permute(0, 2, 3, 4, 1).reshape(B * Tk, H, W, C)
        y = naive_swin_block(sw.block_2, naive_swin_block(sw.block_1, y, g), g)
        x = y.reshape(B, Tk, H, W, C).permute(0, 4, 1, 2, 3)
        x = naive_class_layer(layer.attention, x, tg)
    y = x.permute(0, 2, 1, 3, 4).reshape(B * Tk, C, H, W)
    y = m.head(naive_up(m.decoder2, naive_up(m.decoder1, y, dg[0]), dg[1])).reshape(B, Tk, 4 * H, 4 * W)
    if classes is not None:
        out = torch.full((B, T, 4 * H, 4 * W), -100.0)
        out.scatter_(1, classes[..., None, None].expand(-1, -1, 4 * H, 4 * W), y)
        y = out
    return y


# ------------------------------------------------------------------------------------------------------------
# parameter layout (catseg.md §3)
# ------------------------------------------------------------------------------------------------------------
def expected_catseg_keys(d: int = 512):
    exp = {}
    for i in range(2):
        for b in (1, 2):
            p = f"layers.{i}.swin_block.block_{b}."
            exp.update({
                p + "norm1.weight": (128,), p + "norm1.bias": (128,),
                p + "attn.q.weight": (128, 256), p + "attn.q.bias": (128,),
                p + "attn.k.weight": (128, 256), p + "attn.k.bias": (128,),
                p + "attn.v.weight": (128, 128), p + "attn.v.bias": (128,),
                p + "attn.proj.weight": (128, 128), p + "attn.proj.bias": (128,),
                p + "norm2.weight": (128,), p + "norm2.bias": (128,),
                p + "mlp.fc1.weight": (512, 128), p + "mlp.fc1.bias": (512,),
                p + "mlp.fc2.weight": (128, 512), p + "mlp.fc2.bias": (128,),
            })
        exp[f"layers.{i}.swin_block.block_2.attn_mask"] = (4, 144, 144)
        p = f"layers.{i}."
        exp.update({
            p + "swin_block.guidance_norm.weight": (128,), p + "swin_block.guidance_norm.bias": (128,),
            p + "attention.padding_tokens": (1, 1, 128), p + "attention.padding_guidance": (1, 1, 128),
            p + "attention.attention.q.weight": (128, 256), p + "attention.attention.q.bias": (128,),
            p + "attention.attention.k.weight": (128, 256), p + "attention.attention.k.bias": (128,),
            p + "attention.attention.v.weight": (128, 128), p + "attention.attention.v.bias": (128,),
            p + "attention.MLP.0.weight": (512, 128), p + "attention.MLP.0.bias": (512,),
            p + "attention.MLP.2.weight": (128, 512), p + "attention.MLP.2.bias": (128,),
            p + "attention.norm1.weight": (128,), p + "attention.norm1.bias": (128,),
            p + "attention.norm2.weight": (128,), p + "attention.norm2.bias": (128,),
        })
    exp.update({
        "conv1.weight": (128, 1, 7, 7), "conv1.bias": (128,),
        "guidance_projection.0.weight": (128, d, 3, 3), "guidance_projection.0.bias": (128,),
        "text_guidance_projection.0.weight": (128, d), "text_guidance_projection.0.bias": (128,),
        "decoder_guidance_projection.0.0.weight": (32, 256, 3, 3), "decoder_guidance_projection.0.0.bias": (32,),
        "decoder_guidance_projection.1.0.weight": (16, 128, 3, 3), "decoder_guidance_projection.1.0.bias": (16,),
        "decoder1.up.weight": (128, 96, 2, 2), "decoder1.up.bias": (96,),
        "decoder1.conv.double_conv.0.weight": (64, 128, 3, 3),
        "decoder1.conv.double_conv.1.weight": (64,), "decoder1.conv.double_conv.1.bias": (64,),
        "decoder1.conv.double_conv.3.weight": (64, 64, 3, 3),
        "decoder1.conv.double_conv.4.weight": (64,), "decoder1.conv.double_conv.4.bias": (64,),
        "decoder2.up.weight": (64, 48, 2, 2), "decoder2.up.bias": (48,),
        "decoder2.conv.double_conv.0.weight": (32, 64, 3, 3),
        "decoder2.conv.double_conv.1.weight": (32,), "decoder2.conv.double_conv.1.bias": (32,),
        "decoder2.conv.double_conv.3.weight": (32, 32, 3, 3),
        "decoder2.conv.double_conv.4.weight": (32,), "decoder2.conv.double_conv.4.bias": (32,),
        "head.weight": (1, 32, 3, 3), "head.bias": (1,),
    })
    return exp


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
