"""DMI (Sec. 3.4, Eq. 8-12) against loop references."""
import pytest
import torch

from sam_mi.modeling.dmi import (
    HighFrequencyInjection,
    LowFrequencyInjection,
    intra_mask_context,
    pad_masks,
)


def random_masks(gen, b, n, h, w, p=0.3):
    masks = torch.rand(b, n, h, w, generator=gen) < p  # overlapping masks
    masks[0, 0] = False  # an empty mask
    return masks


def ref_intra(features, masks):
    b, d, h, w = features.shape
    n = masks.shape[1]
    pooled = torch.zeros(b, n, d)
    for i in range(b):
        for k in range(n):
            area = int(masks[i, k].sum())
            if area:
                pooled[i, k] = features[i][:, masks[i, k]].sum(dim=1) / area
    f_intra = features.clone()
    for i in range(b):
        for y in range(h):
            for x in range(w):
                for k in range(n):
                    if masks[i, k, y, x]:
                        f_intra[i, :, y, x] += pooled[i, k]
    return f_intra, pooled


@pytest.mark.parametrize("seed", [0, 1])
def test_intra_mask_context_eq8_eq9(seed):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(2, 5, 6, 7, generator=gen)
    masks = random_masks(gen, 2, 4, 6, 7)
    f_intra, pooled = intra_mask_context(feats, masks)
    ref_f, ref_p = ref_intra(feats, masks)
    assert pooled.shape == (2, 4, 5) and f_intra.shape == feats.shape
    torch.testing.assert_close(pooled, ref_p, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f_intra, ref_f, atol=1e-5, rtol=1e-5)
    assert torch.equal(pooled[0, 0], torch.zeros(5))  # empty mask -> zeros, no NaN
    assert torch.isfinite(f_intra).all()


def test_pad_masks():
    a = torch.rand(3, 4, 5) > 0.5
    b = torch.zeros(0, 4, 5, dtype=torch.bool)
    out = pad_masks([a, b])
    assert out.shape == (2, 3, 4, 5) and out.dtype == torch.bool
    assert torch.equal(out[0], a) and not out[1].any()
    assert pad_masks([b, b]).shape == (2, 1, 4, 5)
    with pytest.raises(ValueError):
        pad_masks([a, torch.zeros(1, 3, 5, dtype=torch.bool)])
    with pytest.raises(ValueError):
        pad_masks([])


def test_low_injection_without_masks_returns_input():
    torch.manual_seed(0)
    low = LowFrequencyInjection(16, num_heads=4)
    feats = torch.randn(2, 16, 4, 5)
    assert torch.equal(low(feats, torch.zeros(2, 0, 4, 5, dtype=torch.bool)), feats)
    assert torch.equal(low(feats, torch.zeros(2, 3, 4, 5, dtype=torch.bool)), feats)
    masks = torch.zeros(2, 3, 4, 5, dtype=torch.bool)
    masks[1, 0, :2] = True  # only image 1 has a mask
    out = low(feats, masks)
    assert torch.equal(out[0], feats[0]) and not torch.allclose(out[1], feats[1])
    assert torch.isfinite(out).all()


def test_low_injection_eq10_reference_and_padding():
    """Padded / empty masks must not change the result: compare with attention over valid masks only."""
    torch.manual_seed(0)
    low = LowFrequencyInjection(8, num_heads=2).eval()
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 8, 3, 4, generator=gen)
    masks = random_masks(gen, 2, 5, 3, 4, p=0.4)
    masks[1, 3] = False
    out = low(feats, masks)
    for i in range(2):
        valid = masks[i].flatten(1).any(1)
        f_intra, pooled = intra_mask_context(feats[i : i + 1], masks[i : i + 1, valid])
        q = f_intra.flatten(2).transpose(1, 2)
        kv = low.norm_kv(pooled)
        inter, _ = low.attn(low.norm_q(q), kv, kv, need_weights=False)
        ref = (inter + q).transpose(1, 2).reshape(1, 8, 3, 4)  # F_mcr = F_inter + F_intra
        torch.testing.assert_close(out[i : i + 1], ref, atol=1e-5, rtol=1e-5)


def test_low_injection_gradients_reach_all_parameters():
    torch.manual_seed(0)
    low = LowFrequencyInjection(8, num_heads=2)
    feats = torch.randn(2, 8, 3, 3, requires_grad=True)
    masks = random_masks(torch.Generator().manual_seed(0), 2, 3, 3, 3, p=0.5)
    low(feats, masks).square().sum().backward()
    for name, p in low.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert feats.grad is not None
    with pytest.raises(ValueError):
        LowFrequencyInjection(10, num_heads=4)


def test_high_injection_without_masks_returns_input():
    torch.manual_seed(0)
    high = HighFrequencyInjection(6, hidden_dim=8)
    assert torch.equal(high.gamma.detach(), torch.ones(6))  # gamma initialised to 1
    g = torch.randn(2, 6, 5, 5)
    assert torch.equal(high(g, torch.zeros(2, 0, 5, 5, dtype=torch.bool)), g)
    assert torch.equal(high(g, torch.zeros(2, 2, 5, 5, dtype=torch.bool)), g)
    masks = torch.zeros(2, 2, 5, 5, dtype=torch.bool)
    masks[0, 1, 1:3, 1:4] = True
    out = high(g, masks)
    assert torch.equal(out[1], g[1]) and not torch.allclose(out[0], g[0])


def test_high_injection_eq11_eq12_reference():
    torch.manual_seed(0)
    c, hid, h, w = 4, 8, 5, 6
    high = HighFrequencyInjection(c, hidden_dim=hid)
    with torch.no_grad():
        high.gamma.copy_(torch.rand(c) + 0.5)
    gen = torch.Generator().manual_seed(2)
    g = torch.randn(1, c, h, w, generator=gen)
    masks = random_masks(gen, 1, 3, h, w, p=0.35)
    # loop reference of the descriptor: mean pooled feature of covering masks + log(1 + count)
    pooled = [g[0][:, m].mean(dim=1) if m.any() else torch.zeros(c) for m in masks[0]]
    desc = torch.zeros(1, c + 1, h, w)
    covered = torch.zeros(1, 1, h, w)
    for y in range(h):
        for x in range(w):
            ks = [k for k in range(3) if masks[0, k, y, x]]
            if ks:
                desc[0, :c, y, x] = torch.stack([pooled[k] for k in ks]).mean(0)
                desc[0, c, y, x] = torch.log1p(torch.tensor(float(len(ks))))
                covered[0, 0, y, x] = 1
    emb = high.proj(desc) * covered
    ref = g + high.gamma.view(1, c, 1, 1) * high.dwconv(high.mlp(torch.cat([g, emb], 1)))
    torch.testing.assert_close(high(g, masks), ref, atol=1e-5, rtol=1e-5)


def test_high_injection_gradients_reach_all_parameters():
    torch.manual_seed(0)
    high = HighFrequencyInjection(4, hidden_dim=8)
    g = torch.randn(2, 4, 6, 6, requires_grad=True)
    masks = random_masks(torch.Generator().manual_seed(3), 2, 3, 6, 6, p=0.4)
    high(g, masks).square().sum().backward()
    for name, p in high.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="resize"):
        high(torch.randn(1, 4, 6, 6), torch.ones(1, 2, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        high(torch.randn(1, 4, 6, 6), torch.ones(1, 2, 6, 6))
