"""sam_mi/utils/memory_trace.py: live tensor bytes replayed from the profiler's allocation events."""
import torch

from sam_mi.utils.memory_trace import TensorMemoryTrace, current_rss_mb, max_rss_mb
from sam_mi.utils.stage_timer import stage

MiB = 2**20


def test_peaks_per_span_and_overall_are_exact_for_known_allocations():
    keep = torch.empty(5 * MiB, dtype=torch.uint8)  # before the trace: not counted, and its free is not seen
    with TensorMemoryTrace() as trace:
        with stage("a"):
            x = torch.empty(1 * MiB, dtype=torch.uint8)
            y = torch.empty(2 * MiB, dtype=torch.uint8)
            del y
        with stage("b"):
            z = torch.empty(3 * MiB, dtype=torch.uint8)
            del z
        with stage("b"):
            w = torch.empty(1 * MiB, dtype=torch.uint8)
        del keep
    spans = trace.spans()
    assert spans["a"] == {"peak_mb": 3.0, "rise_mb": 3.0, "calls": 1}
    assert spans["b"] == {"peak_mb": 4.0, "rise_mb": 3.0, "calls": 2}  # maxima over the two calls
    assert trace.peak_bytes == 4 * MiB and trace.final_bytes == 2 * MiB  # x and w alive at the end
    assert x.numel() + w.numel() == trace.final_bytes


def test_rss_helpers_report_positive_sizes():
    assert max_rss_mb() > 0
    rss = current_rss_mb()
    assert rss is None or 0 < rss <= max_rss_mb() * 1.01
