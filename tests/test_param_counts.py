"""Full-size baselines build with random weights (no download) and match CAT-Seg's parameter counts
(the released CAT-Seg models: ViT-B/16 154.3M total / 25.1M trainable; ViT-L/14@336 433.7M / 70.3M)."""
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from conftest import REPO

from sam_mi import add_sam_mi_config


def build(config: str):
    cfg = get_cfg()
    add_sam_mi_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, config))
    cfg.merge_from_list(["MODEL.SAM_MI.CLIP.PRETRAINED", "", "MODEL.DEVICE", "cpu"])
    return build_model(cfg)


@pytest.mark.parametrize(
    "config, total, trainable, aggregator",
    [
        ("configs/coco-stuff-171/catseg_vitb16_384.yaml", 154_289_378, 25_115_873, 2_308_961),
        ("configs/coco-stuff-171/catseg_vitl14_336.yaml", 433_726_946, 70_270_177, 2_636_641),
    ],
)
def test_baseline_parameter_counts(config, total, trainable, aggregator):
    torch.manual_seed(0)
    model = build(config)
    params = list(model.named_parameters())
    assert sum(p.numel() for _, p in params) == total
    assert sum(p.numel() for _, p in params if p.requires_grad) == trainable
    assert sum(p.numel() for n, p in params if n.startswith("cost_head.aggregator.")) == aggregator
    # no SAM-MI module in the baseline
    assert model.prompter is None and model.mask_generator is None and not model.cost_head.injects
