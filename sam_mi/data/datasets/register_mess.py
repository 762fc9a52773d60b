"""MESS benchmark (22 datasets, 25 evaluation names) through the ``mess-benchmark`` package.

Nothing here retypes what the package provides: the dataset names, display names and domains come from
``mess.evaluation.mess_evaluation`` (the package's own aggregation script), class names / classes of
interest / background class from the metadata that ``mess.datasets`` registers, and the preparation entry
points are the package's ``mess.prepare_datasets.prepare_<x>`` modules.

``import mess.datasets`` registers every split at import time, rooted at ``$DETECTRON2_DATASETS``; it is
wrapped in :func:`register_mess_datasets` so that plain runs never pay for it, and so that a different
root can be chosen after the import (the splits are then re-registered under the new root).
"""
import importlib
import inspect
import os
import types
from typing import Callable, Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = [
    "register_mess_datasets",
    "mess_dataset_names",
    "mess_display_names",
    "mess_domains",
    "is_mess_dataset",
    "mess_prepare_command",
    "PAXRAY_TASKS",
    "PAXRAY_COMBINED",
    "MANUAL_DOWNLOADS",
]

# The four PAXRay tasks are independent binary problems (masks overlap); MESS reports their mean as
# "PAXRay-4", one of the 22 datasets.  The key is the package's own id for the combined entry.
PAXRAY_COMBINED = "paxray_combined"
PAXRAY_TASKS = (
    "paxray_sem_seg_test_lungs",
    "paxray_sem_seg_test_bones",
    "paxray_sem_seg_test_mediastinum",
    "paxray_sem_seg_test_diaphragm",
)

# The five datasets the package cannot download: where to get the files (the package's prepare scripts
# only print these inside assertion messages or comments of `prepare_all_datasets.py`'s __main__).
# Keyed by the suffix of the package's prepare module.
MANUAL_DOWNLOADS: Dict[str, str] = {
    "bdd100k": "download bdd100k_images_10k.zip and bdd100k_sem_seg_labels_trainval.zip from "
    "https://bdd-data.berkeley.edu/ into the dataset root (or the working directory)",
    "isprs_potsdam": "download the Potsdam zip from "
    "https://www.isprs.org/education/benchmarks/UrbanSemLab/default.aspx into the dataset root",
    "floodnet": "download the folder FloodNet-Supervised_v1.0 from "
    "https://drive.google.com/drive/folders/1leN9eWVQcvWDVYwNb2GCo5ML_wBEycWD into the dataset root",
    "uavid": "download the UAVid v1.5 validation zip from https://uavid.nl into the working directory",
    "cryonuseg": "download the Kaggle dataset 'segmentation-of-nuclei-in-cryosectioned-he-images' and put "
    "its folder 'archive' into the dataset root (or the working directory)",
}

_MESS_MODULE_PREFIX = "mess.datasets.register_"
# Root the splits are currently registered under (None until registered by us).
_registered_root: Optional[str] = None


def _import_mess(module: str) -> types.ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"MESS evaluation needs the `mess-benchmark` package ({e}). Install it with "
            "`pip install mess-benchmark==0.2` (or `pip install -e .[mess]`)."
        ) from e


def _aggregation_module() -> types.ModuleType:
    # mess_evaluation.py is a script, but its tables are module-level and its main code is guarded.
    return _import_mess("mess.evaluation.mess_evaluation")


def mess_display_names() -> Dict[str, str]:
    """MESS id -> display name (e.g. ``bdd100k_sem_seg_val`` -> "BDD100K"), including the four PAXRay
    tasks and ``paxray_combined`` -> "PAXRay-4", in the official order."""
    return dict(_aggregation_module().dataset_names)


def mess_domains() -> Dict[str, str]:
    """MESS id -> domain ("General", "Earth Monitoring", "Medical Sciences", "Engineering",
    "Agriculture and Biology"), including the PAXRay tasks and ``paxray_combined``."""
    return dict(_aggregation_module().dataset_domains)


def mess_dataset_names() -> List[str]:
    """The 25 registered names MESS evaluates, in the official order (PAXRay-4 as its four tasks)."""
    return [name for name in mess_display_names() if name != PAXRAY_COMBINED]


def _register_functions() -> List[Callable[[str], None]]:
    """The package's per-dataset ``register_*(root)`` functions, one per module that
    ``mess.datasets`` imports (its ``__init__`` lists exactly the 22 datasets)."""
    package = _import_mess("mess.datasets")
    functions = []
    for name, module in sorted(vars(package).items()):
        if not (isinstance(module, types.ModuleType) and module.__name__.startswith(_MESS_MODULE_PREFIX)):
            continue
        found = [
            f
            for n, f in vars(module).items()
            if n.startswith("register") and inspect.isfunction(f) and f.__module__ == module.__name__
        ]
        if len(found) != 1:
            raise RuntimeError(f"expected one register function in {module.__name__}, found {len(found)}")
        functions.append(found[0])
    return functions


def register_mess_datasets(root: Optional[str] = None) -> List[str]:
    """Register every MESS split (idempotent) and return the 25 evaluation names.

    Args:
        root: dataset root holding the prepared MESS folders; default ``$DETECTRON2_DATASETS`` or
            ``datasets``.  If the package was already imported under another root, its splits are
            removed and registered again under this one (its register functions take the root).
    """
    global _registered_root
    root = root or os.getenv("DETECTRON2_DATASETS", "datasets")
    functions = _register_functions()  # the import registers under $DETECTRON2_DATASETS
    current = _registered_root
    if current is None:
        current = getattr(inspect.getmodule(functions[0]), "_root", root)
    if os.path.abspath(current) != os.path.abspath(root):
        for register in functions:
            module = register.__module__
            for name in [n for n, f in list(DatasetCatalog.items()) if getattr(f, "__module__", "") == module]:
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)
            register(root)
    _registered_root = root
    return mess_dataset_names()


def is_mess_dataset(dataset_name: str) -> bool:
    """True if ``dataset_name`` was registered by the MESS package (any split, incl. ``*_official``)."""
    # DatasetCatalog.get() would load the dataset; the registered function's module says who made it.
    func = DatasetCatalog.data.get(dataset_name)
    return getattr(func, "__module__", "").startswith(_MESS_MODULE_PREFIX)


def _prepare_module_suffix(dataset_name: str) -> str:
    func = DatasetCatalog.data.get(dataset_name)
    module = getattr(func, "__module__", "")
    if not module.startswith(_MESS_MODULE_PREFIX):
        raise KeyError(f"{dataset_name!r} is not a registered MESS dataset; call register_mess_datasets() first")
    # The package names its prepare modules after its register modules (register_x <-> prepare_x).
    return module[len(_MESS_MODULE_PREFIX):]


def mess_prepare_command(dataset_name: str, root: Optional[str] = None) -> str:
    """Shell command that prepares ``dataset_name`` with the package's own entry point, preceded by the
    manual download step for the five datasets that need one."""
    root = root or _registered_root or os.getenv("DETECTRON2_DATASETS", "datasets")
    suffix = _prepare_module_suffix(dataset_name)
    command = f"DETECTRON2_DATASETS={root} python -m mess.prepare_datasets.prepare_{suffix}"
    if suffix in MANUAL_DOWNLOADS:
        command = f"{MANUAL_DOWNLOADS[suffix]}, then run: {command}"
    return command
