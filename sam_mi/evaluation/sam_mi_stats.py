"""Per-image prompt and mask counts of an evaluation: the numbers of the paper's Table 6.

arXiv 2511.20027 Table 6 reports the average number of points TSPP samples per image (A-847 47, PC-459 39,
A-150 41, PC-59 37, PAS-20 32).  The model reports, for every image, ``outputs[i]["sam_mi"]`` =
``{"num_points", "num_sam_masks", "num_masks", "injected"}`` (``SAMMI.inference_one``: points prompted,
masks SAM returned, masks after SMAgg, and whether they were injected by DMI), summed over the views of
the image (every sliding window and the global view with ``INFERENCE.SLIDING_WINDOW``).
:class:`SAMMIStatsEvaluator` averages them over the images of a dataset, across processes.
"""
import itertools
from typing import Dict, List, Optional

from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

__all__ = ["SAMMIStatsEvaluator", "summarize_sam_mi_stats", "STAT_COLUMNS"]

# result key -> what it averages
STAT_COLUMNS = {
    "points_per_image": "TSPP points prompted to SAM",
    "sam_masks_per_image": "masks SAM returned",
    "injected_masks_per_image": "masks injected by DMI (after SMAgg; 0 for images not injected)",
}


def summarize_sam_mi_stats(rows: List[List[int]]) -> Dict[str, float]:
    """Means over images of rows ``[num_points, num_sam_masks, num_masks, injected]``."""
    n = len(rows)
    if n == 0:
        return {}
    return {
        "images": n,
        "points_per_image": sum(r[0] for r in rows) / n,
        "sam_masks_per_image": sum(r[1] for r in rows) / n,
        "injected_masks_per_image": sum(r[2] for r in rows if r[3]) / n,
        "injected_image_fraction": sum(r[3] for r in rows) / n,
    }


class SAMMIStatsEvaluator(DatasetEvaluator):
    """Collects ``outputs[i]["sam_mi"]``; ``evaluate()`` returns ``{"sam_mi": summary}`` on the main
    process (``{}`` when the model reports no counts, e.g. a model without SAM), None on the others."""

    def __init__(self, distributed: Optional[bool] = None):
        self._distributed = comm.get_world_size() > 1 if distributed is None else distributed
        self._rows: List[List[int]] = []

    def reset(self) -> None:
        self._rows = []

    def process(self, inputs, outputs) -> None:
        for output in outputs:
            stats = output.get("sam_mi") if isinstance(output, dict) else None
            if stats is not None:
                self._rows.append([int(stats["num_points"]), int(stats["num_sam_masks"]), int(stats["num_masks"]),
                                   int(bool(stats["injected"]))])

    def evaluate(self):
        rows = self._rows
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather(rows, dst=0)
            if not comm.is_main_process():
                return None
            rows = list(itertools.chain(*gathered))
        summary = summarize_sam_mi_stats(rows)
        return {"sam_mi": summary} if summary else {}
