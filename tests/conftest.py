"""Shared fixtures: configs of the tiny model and a synthetic dataset generated once per session."""
import os
import tempfile

# ultralytics (MobileSAM / FastSAM variants) must neither reach the network nor write settings to ~/.config
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="sam_mi_yolo_"))

import pytest  # noqa: E402
import torch  # noqa: E402

import sam_mi  # noqa: F401  (registers SAMMI and the datasets)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_cfg(config: str = "configs/tiny/sam_mi_tiny_stage2.yaml", opts=()):
    """A frozen config for the tiny model (no weights file: MODEL.WEIGHTS cleared)."""
    from detectron2.config import get_cfg

    from sam_mi import add_sam_mi_config

    cfg = get_cfg()
    add_sam_mi_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, config))
    cfg.merge_from_list(["MODEL.WEIGHTS", ""] + list(opts))
    cfg.freeze()
    return cfg


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """DETECTRON2_DATASETS pointing at a freshly generated synthetic COCO-Stuff-layout dataset."""
    from sam_mi.data.synthetic import generate_synthetic_stuff

    root = str(tmp_path_factory.mktemp("datasets"))
    generate_synthetic_stuff(root, num_train=48, num_val=8, image_size=128, seed=0)
    old = os.environ.get("DETECTRON2_DATASETS")
    os.environ["DETECTRON2_DATASETS"] = root
    yield root
    if old is None:
        os.environ.pop("DETECTRON2_DATASETS", None)
    else:
        os.environ["DETECTRON2_DATASETS"] = old
