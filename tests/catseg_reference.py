"""Naive CAT-Seg reference implementations and fixtures for tests/test_aggregator.py, written from CAT-Seg's code
(cvlab-kaist/CAT-Seg cat_seg/modeling/transformer/model.py): explicit loops, guidance repeated per class and
concatenated, sequences padded with the learned padding tokens, the way CAT-Seg computes them."""
import math

import torch
import torch.nn.functional as F

from sam_mi.modeling.aggregator import Aggregator
from sam_mi.modeling.layers import ClassTransformerLayer, GuidedSwinBlock, LinearAttention, window_reverse

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
# parameter layout (CAT-Seg's Aggregator, keys under sem_seg_head.predictor.transformer. in its checkpoints)
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
