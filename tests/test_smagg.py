"""SMAgg (Sec. 3.3, Eq. 6-7) against a loop reference."""
import pytest
import torch

from sam_mi.modeling.smagg import matching_scores, shallow_mask_aggregation


def ref_smagg(sam, text, alpha, best_only=True):
    """Loop reference. best_only=False is Eq. 7 read literally (a mask may join several classes)."""
    sam = [m for m in sam if m.any()]
    members = {k: [] for k in range(len(text))}
    leftover = []
    for i, m in enumerate(sam):
        area = int(m.sum())
        scores = [int((m & t).sum()) / (area + 1e-6) for t in text]
        passing = [k for k, s in enumerate(scores) if s > alpha]
        if not passing:
            leftover.append(m)
            continue
        if best_only:
            passing = [max(passing, key=lambda k: (scores[k], -k))]
        for k in passing:
            members[k].append(m)
    out = []
    for k in range(len(text)):
        if members[k]:
            u = torch.zeros_like(text[0])
            for m in members[k]:
                u |= m
            out.append(u)
    out += leftover
    return torch.stack(out) if out else torch.zeros(0, *text.shape[1:], dtype=torch.bool)


def random_case(seed, n_s=12, k=4, h=16, w=20):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (4, 5), generator=gen)
    labels = labels.repeat_interleave(4, 0).repeat_interleave(4, 1)[:h, :w]  # blocky partition
    text = labels[None] == torch.arange(k)[:, None, None]
    sam = torch.zeros(n_s, h, w, dtype=torch.bool)
    for i in range(n_s):  # random rectangles
        y0 = torch.randint(0, h - 1, (1,), generator=gen).item()
        x0 = torch.randint(0, w - 1, (1,), generator=gen).item()
        hh, ww = torch.randint(1, 7, (2,), generator=gen).tolist()
        sam[i, y0 : y0 + hh, x0 : x0 + ww] = True
    sam[n_s // 2] = False  # one empty SAM mask
    return sam, text


def test_matching_scores_eq6():
    sam, text = random_case(0)
    o = matching_scores(sam, text)
    for i in range(len(sam)):
        for k in range(len(text)):
            ref = (sam[i] & text[k]).sum() / (sam[i].sum() + 1e-6)
            assert o[i, k].item() == pytest.approx(ref.item(), abs=1e-6)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("alpha", [0.3, 0.4, 0.5, 0.7, 0.0])
def test_matches_loop_reference(seed, alpha):
    sam, text = random_case(seed)
    out = shallow_mask_aggregation(sam, text, alpha)
    ref = ref_smagg(sam, text, alpha)
    assert out.dtype == torch.bool
    assert torch.equal(out, ref)
    assert out.shape[0] <= sam.flatten(1).any(1).sum()  # N_m <= N_s (non-empty)
    if alpha >= 0.5:  # partitioning text masks: identical to the literal Eq. 7
        assert torch.equal(out, ref_smagg(sam, text, alpha, best_only=False))


def test_leftovers_and_threshold():
    text = torch.zeros(2, 4, 8, dtype=torch.bool)
    text[0, :, :4] = True
    text[1, :, 4:] = True
    sam = torch.zeros(4, 4, 8, dtype=torch.bool)
    sam[0, :2, :3] = True  # fully inside class 0
    sam[1, 2:, :2] = True  # fully inside class 0 -> merged with sam[0]
    sam[2, 0, 2:6] = True  # half / half: leftover at alpha 0.5 (strict >)
    sam[3, 3, 5:8] = True  # fully inside class 1 -> class 1's mask alone
    out = shallow_mask_aggregation(sam, text, 0.5)
    assert out.shape[0] == 3
    assert torch.equal(out[0], sam[0] | sam[1])
    assert torch.equal(out[1], sam[3])
    assert torch.equal(out[2], sam[2])
    # alpha < 0.5: the straddling mask passes both classes but joins only the best (tie -> class 0)
    low = shallow_mask_aggregation(sam, text, 0.3)
    assert low.shape[0] == 2
    assert torch.equal(low[0], sam[0] | sam[1] | sam[2])
    assert torch.equal(low[1], sam[3])
    # alpha high: nothing merges, everything is a leftover
    assert torch.equal(shallow_mask_aggregation(sam, text, 0.999999999), sam)


def test_edge_cases_and_errors():
    text = torch.ones(1, 3, 3, dtype=torch.bool)
    assert shallow_mask_aggregation(torch.zeros(0, 3, 3, dtype=torch.bool), text).shape == (0, 3, 3)
    assert shallow_mask_aggregation(torch.zeros(2, 3, 3, dtype=torch.bool), text).shape == (0, 3, 3)
    sam = torch.rand(3, 3, 3) > 0.3
    no_text = torch.zeros(0, 3, 3, dtype=torch.bool)
    assert torch.equal(shallow_mask_aggregation(sam, no_text), sam[sam.flatten(1).any(1)])
    with pytest.raises(ValueError):
        shallow_mask_aggregation(sam.float(), text)
    with pytest.raises(ValueError, match="resolution"):
        shallow_mask_aggregation(sam, torch.ones(1, 4, 4, dtype=torch.bool))
