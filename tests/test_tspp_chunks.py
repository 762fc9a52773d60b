"""TSPP's heads in class chunks (sam_mi/modeling/tspp_context.py): same outputs and gradients, less memory."""
import pytest
import torch
import torch.nn.functional as F

from sam_mi.modeling.tspp import TSPPHead
from sam_mi.modeling.tspp_context import ClassLinearAttention, class_slices
from sam_mi.modeling.tspp_heads import PaperTSPPHead
from sam_mi.utils.memory_trace import TensorMemoryTrace

HEADS = [PaperTSPPHead, TSPPHead]


def test_linear_attention_matches_its_definition_and_chunk_summaries_add_up():
    """out_t = sum_j (phi(q_t).phi(k_j)) v_j / sum_j phi(q_t).phi(k_j), phi = elu + 1, per head, written as
    an explicit [T, T] weight matrix; `attend` on summaries of disjoint chunks gives the same."""
    torch.manual_seed(0)
    attn = ClassLinearAttention(16, 4)
    x = torch.randn(3, 11, 16)  # [L, T, C]
    q, k, v = attn.qkv(x).view(3, 11, 3, 4, 4).unbind(dim=2)
    q, k = F.elu(q) + 1, F.elu(k) + 1
    weights = torch.einsum("lthd,lshd->lhts", q, k)
    weights = weights / weights.sum(-1, keepdim=True)
    reference = attn.proj(torch.einsum("lhts,lshd->lthd", weights, v).reshape(3, 11, 16))
    torch.testing.assert_close(attn(x), reference, rtol=1e-5, atol=1e-6)
    parts = [attn.summarize(x[:, s]) for s in class_slices(11, 4)]
    kv, k_sum = sum(p[0] for p in parts), sum(p[1] for p in parts)
    chunked = torch.cat([attn.attend(x[:, s], kv, k_sum) for s in class_slices(11, 4)], dim=1)
    torch.testing.assert_close(chunked, reference, rtol=1e-5, atol=1e-6)


def test_class_slices():
    assert class_slices(10, 0) == [slice(0, 10)] and class_slices(10, 10) == [slice(0, 10)]
    slices = class_slices(37, 8)
    assert len(slices) == 5 and max(s.stop - s.start for s in slices) <= 8
    assert torch.cat([torch.arange(37)[s] for s in slices]).tolist() == list(range(37))


@pytest.mark.parametrize("head_cls", HEADS)
@pytest.mark.parametrize("chunk", [1, 5, 16, 36])
def test_chunked_head_matches_unchunked_outputs_and_gradients(head_cls, chunk):
    torch.manual_seed(0)
    whole = head_cls(hidden_dim=16, grid_size=12, class_chunk=0)
    chunked = head_cls(hidden_dim=16, grid_size=12, class_chunk=chunk)
    chunked.load_state_dict(whole.state_dict())
    cost = torch.randn(2, 37, 9, 9)
    outputs = []
    for head in (whole, chunked):
        prob, logits = head(cost)
        (prob.square().mean() + logits.tanh().mean()).backward()
        outputs.append((prob, logits, {n: p.grad for n, p in head.named_parameters()}))
    (p0, l0, g0), (p1, l1, g1) = outputs
    torch.testing.assert_close(p1, p0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
    for name, grad in g0.items():
        torch.testing.assert_close(g1[name], grad, rtol=1e-4, atol=1e-6, msg=f"gradient of {name}")


@pytest.mark.parametrize("head_cls", HEADS)
def test_chunked_head_peak_memory_is_a_fraction_of_the_unchunked(head_cls):
    """Test-time peak tensor memory of the head on 400 classes (24 x 24 maps, C = 32), measured with the
    profiler's allocation events: chunks of 25 classes need less than half of the unchunked peak (measured: 45 vs
    285 MiB for PaperTSPPHead, 44 vs 254 MiB for TSPPHead), and well over the one [B, h*w, T, C] tensor that stays whole."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the trace sees the calling thread's allocations only
    try:
        cost = torch.randn(1, 400, 24, 24)
        peaks = {}
        for chunk in (0, 25):
            head = head_cls(hidden_dim=32, grid_size=32, class_chunk=chunk).eval()
            with torch.inference_mode(), TensorMemoryTrace() as trace:
                head(cost)
            peaks[chunk] = trace.peak_bytes
    finally:
        torch.set_num_threads(threads)
    one_tensor = 400 * 24 * 24 * 32 * 4
    assert peaks[25] < 0.5 * peaks[0], peaks
    assert peaks[0] > 4 * one_tensor, peaks  # the unchunked head holds several [B, T, h, w, C] tensors
