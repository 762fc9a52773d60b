"""Which evaluator scores which dataset."""
from typing import Optional, Union

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator, SemSegEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from PIL import Image

from ..data.datasets.register_mess import is_mess_dataset
from .voc_background import VOCbEvaluator

__all__ = ["build_evaluator", "evaluator_kind", "load_sem_seg_gt"]


def load_sem_seg_gt(filename: str, copy: bool = False, dtype: Optional[Union[np.dtype, str]] = None) -> np.ndarray:
    """Read a label map (PNG, or 16-bit TIFF for ADE-847 / PC-459) as an array [H, W].

    detectron2's default loader calls ``np.array(image, copy=False, dtype=int)``, which numpy >= 2 refuses
    (a dtype change needs a copy); ``np.asarray`` keeps the meaning on both numpy generations.
    """
    del copy  # the conversion to ``dtype`` copies when it must
    with PathManager.open(filename, "rb") as f:
        return np.asarray(Image.open(f), dtype=dtype)


def evaluator_kind(dataset_name: str) -> str:
    """"mess_sem_seg", "sem_seg_background" or "sem_seg" for a registered dataset.

    MESS datasets register ``evaluator_type="sem_seg"`` (the package's own value, which detectron2's
    metadata will not let us overwrite), so they are recognised by who registered them
    (:func:`is_mess_dataset`) or by an explicit ``evaluator_type="mess_sem_seg"``.
    """
    meta = MetadataCatalog.get(dataset_name)
    kind = meta.get("evaluator_type", None)
    if kind == "mess_sem_seg" or is_mess_dataset(dataset_name):
        return "mess_sem_seg"
    if kind in ("sem_seg", "sem_seg_background"):
        return kind
    raise ValueError(
        f"dataset {dataset_name!r} has evaluator_type={kind!r}; SAM-MI evaluates 'sem_seg', "
        "'sem_seg_background' (VOC-20b) and MESS datasets. Is the dataset registered?"
    )


def build_evaluator(
    cfg, dataset_name: str, output_folder: Optional[str] = None, distributed: Optional[bool] = None
) -> DatasetEvaluator:
    """The evaluator for ``dataset_name``.

    - "sem_seg": detectron2 ``SemSegEvaluator`` (mIoU over the dataset's ``stuff_classes``);
    - "sem_seg_background": :class:`VOCbEvaluator` (predictions >= 20 count as background);
    - MESS datasets: ``mess.evaluation.sem_seg_evaluation.MESSSemSegEvaluator`` (mIoU with the
      background class included as MESS's headline, CoI-mIoU, per-class IoU; writes
      ``sem_seg_evaluation.pth`` that MESS's own aggregation script reads).

    Args:
        cfg: the config (unused today; kept for detectron2's ``build_evaluator(cfg, name, folder)``).
        output_folder: where the evaluator writes its files (predictions, confusion matrix), or None.
        distributed: gather over processes; default True when more than one process runs.
    """
    del cfg
    if distributed is None:
        distributed = comm.get_world_size() > 1
    kind = evaluator_kind(dataset_name)
    if kind == "mess_sem_seg":
        try:
            from mess.evaluation.sem_seg_evaluation import MESSSemSegEvaluator
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(f"{dataset_name} needs `pip install mess-benchmark==0.2` ({e})") from e
        evaluator = MESSSemSegEvaluator(dataset_name, distributed=distributed, output_dir=output_folder)
    elif kind == "sem_seg_background":
        evaluator = VOCbEvaluator(dataset_name, distributed=distributed, output_dir=output_folder)
    else:
        evaluator = SemSegEvaluator(dataset_name, distributed=distributed, output_dir=output_folder)
    # MESSSemSegEvaluator does not pass `sem_seg_loading_fn` on, so it is set on every evaluator here.
    evaluator.sem_seg_loading_fn = load_sem_seg_gt
    return evaluator
