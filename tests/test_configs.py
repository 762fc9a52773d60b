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
                   "t5_sampling_grid", "t5_sampling_random64", "t9_hq_sam_h", "t9_sam2_l", "t9_fastsam",
                   "t9_mobile_sam", "f8_alpha_sma_0.3", "f8_alpha_sma_0.4", "f8_alpha_sma_0.6", "f8_alpha_sma_0.7",
                   "extra_wo_tspp_head"):
        assert needed in names
    # Table 7 and 8 rows act through stage 1's targets / loss: a stage-1 + stage-2 pair each
    for row in ("t7_mp12_gp5", "t7_mp10_gp4", "t7_mp10_gp6", "t7_mp8_gp5", "t8_lambda_mse_0.1", "t8_lambda_mse_1.0"):
        assert {f"{row}_stage1", f"{row}_stage2"} <= names, row
        stage1 = load(os.path.join(REPO, f"configs/coco-stuff-171/ablations/{row}_stage1.yaml"), tiny=False)
        stage2 = load(os.path.join(REPO, f"configs/coco-stuff-171/ablations/{row}_stage2.yaml"), tiny=False)
        assert stage1.MODEL.SAM_MI.TRAIN_STAGE == 1 and stage2.MODEL.SAM_MI.TRAIN_STAGE == 2
        assert stage2.MODEL.WEIGHTS == os.path.join(stage1.OUTPUT_DIR, "model_final.pth")
        t1, t2 = stage1.MODEL.SAM_MI.TSPP, stage2.MODEL.SAM_MI.TSPP
        assert (t1.M_P, t1.G_P, t1.LAMBDA_MSE) == (t2.M_P, t2.G_P, t2.LAMBDA_MSE)


def test_table3_wo_tspp_keeps_tspp_and_prompts_the_grid():
    """The paper's Table 3 "w/o TSPP" numbers are Table 5's uniform-grid row: TSPP present, 32x32 grid."""
    abl = os.path.join(REPO, "configs/coco-stuff-171/ablations")
    wo = load(os.path.join(abl, "t3_wo_tspp.yaml"), tiny=False)
    assert wo.MODEL.SAM_MI.TSPP.ENABLED and wo.MODEL.SAM_MI.TSPP.SAMPLING == "grid"
    assert wo.MODEL.SAM_MI.TSPP.GRID_SIZE == 32 and wo.MODEL.SAM_MI.SAM.ENABLED
    assert wo == load(os.path.join(abl, "t5_sampling_grid.yaml"), tiny=False)
    extra = load(os.path.join(abl, "extra_wo_tspp_head.yaml"), tiny=False)
    assert not extra.MODEL.SAM_MI.TSPP.ENABLED and extra.MODEL.SAM_MI.TSPP.SAMPLING == "grid"


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
