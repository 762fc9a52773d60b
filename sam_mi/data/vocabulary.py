"""Which class names a dataset is evaluated with."""
from typing import List

from detectron2.data import MetadataCatalog


def dataset_vocabulary(dataset_name: str) -> List[str]:
    """The prompts for ``dataset_name``: its metadata ``vocabulary`` when set (e.g. VOC-20b's 59 names, of
    which the last 39 count as background), else its ``stuff_classes``.

    Raises a ValueError naming the dataset when neither is registered, instead of a KeyError deep inside.
    """
    meta = MetadataCatalog.get(dataset_name)
    names = meta.get("vocabulary", None) or meta.get("stuff_classes", None)
    if not names:
        raise ValueError(
            f"dataset {dataset_name!r} has no class names in MetadataCatalog (stuff_classes); "
            "is it registered? import sam_mi registers the benchmarks; MESS needs "
            "sam_mi.data.datasets.register_mess.register_mess_datasets()"
        )
    return [str(n) for n in names]
