"""Every shipped configuration: the full-size ones parse and name existing keys; every ablation row of
Tables 3-9 / Fig. 8 builds and runs one training step and one inference at tiny scale."""
import glob
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from conftest import REPO

from sam_mi import add_sam_mi_config

FULL = sorted(glob.glob(os.path.join(REPO, "configs/coco-stuff-171/**/*.yaml"), recursive=True))
ABLATIONS = sorted(glob.glob(os.path.join(REPO, "configs/coco-stuff-171/ablations/*.yaml")))
STAGES = [p for p in FULL if "sam_mi_vitb16_384_stage" in p]


def load(path: str, tiny: bool):
    cfg = get_cfg()
    add_sam_mi_config(cfg)
    cfg.merge_from_file(path)  # an unknown key raises here
    if tiny:
        # The tiny scale overlay changes sizes only (CLIP, aggregator widths, SAM type, data, solver); the
        # ablated switches (TSPP/SAM/SMAgg/DMI, sampling, m_p, g_p, lambdas, alpha_sma, variant) stay.
        cfg.merge_from_file(os.path.join(REPO, "configs/tiny/Base-tiny.yaml"))
        cfg.MODEL.WEIGHTS = ""
    return cfg


def test_there_is_a_config_per_ablation_row():
    names = {os.path.basename(p)[:-5] for p in ABLATIONS}
    for needed in ("t3_wo_dmi", "t3_wo_smagg", "t3_wo_tspp", "t4_dmi_low_only", "t4_dmi_high_only",
                   "t5_sampling_grid", "t5_sampling_random64", "t7_mp12_gp5", "t7_mp10_gp4", "t7_mp10_gp6",
                   "t7_mp8_gp5", "t8_lambda_mse_0.1_stage2", "t8_lambda_mse_1.0_stage2", "f8_alpha_sma_0.3",
                   "f8_alpha_sma_0.7"):
        assert needed in names


@pytest.mark.parametrize("path", FULL, ids=lambda p: os.path.relpath(p, REPO))
def test_full_size_config_parses(path):
    cfg = load(path, tiny=False)
    assert cfg.MODEL.META_ARCHITECTURE == "SAMMI"
    assert cfg.SOLVER.IMS_PER_BATCH == 4 and cfg.SOLVER.BASE_LR == 2e-4 and cfg.SOLVER.CLIP_MULTIPLIER == 0.01


@pytest.mark.parametrize("path", ABLATIONS + STAGES, ids=lambda p: os.path.basename(p))
def test_ablation_runs_at_tiny_scale(path, synthetic_root):
    cfg = load(path, tiny=True)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    sem_seg = torch.randint(0, len(model.train_class_names), (128, 128))
    image = torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8)
    losses = model([{"image": image, "sem_seg": sem_seg}])
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    out = model([{"image": image, "height": 128, "width": 128}])[0]
    assert out["sem_seg"].shape == (len(model.test_class_names), 128, 128)
