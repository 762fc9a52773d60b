"""Which evaluator scores which dataset."""
from typing import Optional

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..data.datasets.register_mess import is_mess_dataset
from .ground_truth import CheckedSemSegEvaluator, with_checked_ground_truth
from .voc_background import VOCbEvaluator

__all__ = ["build_evaluator", "evaluator_kind"]


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

    Every one reads and checks ground truth through
    :class:`~sam_mi.evaluation.ground_truth.CheckedGroundTruth` (single channel, the image's size, ids within
    the classes or the ignore label), the check the training mapper applies.

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
        evaluator_class = with_checked_ground_truth(MESSSemSegEvaluator)
    elif kind == "sem_seg_background":
        evaluator_class = VOCbEvaluator
    else:
        evaluator_class = CheckedSemSegEvaluator
    return evaluator_class(dataset_name, distributed=distributed, output_dir=output_folder)
