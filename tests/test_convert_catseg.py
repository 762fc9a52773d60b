"""Tests of the CAT-Seg v2 -> SAM-MI checkpoint conversion (sam_mi.utils.catseg_compat and the tool)."""
import importlib.util
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from sam_mi.config import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD
from sam_mi.modeling.clip import DenseCLIP
from sam_mi.utils.catseg_compat import (
    convert_catseg_state_dict,
    sammi_to_catseg_state_dict,
    unwrap_checkpoint,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_tool():
    path = os.path.join(ROOT, "tools", "convert_catseg_checkpoint.py")
    spec = importlib.util.spec_from_file_location("convert_catseg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeSAMMI(nn.Module):
    """The CAT-Seg-derived part of SAM-MI's attribute layout (docs/CONTRACTS.md) with a stand-in aggregator."""

    def __init__(self) -> None:
        super().__init__()
        self.clip = DenseCLIP(
            "sam-mi-tiny", "", (96, 96), [1, 2], "attention", "single", CLIP_PIXEL_MEAN, CLIP_PIXEL_STD
        )
        self.cost_head = nn.Module()
        self.cost_head.upsample1 = nn.ConvTranspose2d(64, 256, 2, 2)
        self.cost_head.upsample2 = nn.ConvTranspose2d(64, 128, 4, 4)
        aggregator = self.cost_head.aggregator = nn.Module()
        aggregator.conv1 = nn.Conv2d(1, 8, 7, padding=3)
        block_2 = nn.Module()
        block_2.register_buffer("attn_mask", torch.zeros(4, 144, 144))  # persistent in CAT-Seg and ours
        aggregator.layers = nn.ModuleList([nn.Module()])
        aggregator.layers[0].swin_block = nn.Module()
        aggregator.layers[0].swin_block.block_2 = block_2


def _catseg_layout(ours: dict) -> dict:
    """Rename our keys to CAT-Seg's by hand (independent of the code under test)."""
    out = {}
    for k, v in ours.items():
        k = k.replace("clip.model.", "sem_seg_head.predictor.clip_model.", 1)
        k = k.replace("cost_head.aggregator.", "sem_seg_head.predictor.transformer.", 1)
        k = k.replace("cost_head.upsample", "upsample", 1)
        out[k] = torch.randn_like(v) if v.is_floating_point() else v.clone()
    return out


def test_tool_converts_catseg_checkpoint_loadable_by_detectron2(tmp_path, capsys):
    torch.manual_seed(0)
    target = FakeSAMMI()
    catseg = _catseg_layout(target.state_dict())
    assert "sem_seg_head.predictor.clip_model.visual.transformer.resblocks.0.attn.q_proj_weight" in catseg
    torch.save({"model": catseg, "iteration": 79999}, tmp_path / "model_base.pth")

    argv = ["--input", str(tmp_path / "model_base.pth"), "--output", str(tmp_path / "out" / "sammi.pth")]
    assert _load_tool().main(argv) == 0
    printed = capsys.readouterr().out
    assert "clip.model." in printed and "aggregator." in printed

    saved = torch.load(tmp_path / "out" / "sammi.pth", map_location="cpu")
    converted = saved["model"]
    assert set(converted) == set(target.state_dict())  # every key maps back, nothing unexpected
    for key, value in catseg.items():
        ours = key.replace("sem_seg_head.predictor.clip_model.", "clip.model.").replace(
            "sem_seg_head.predictor.transformer.", "cost_head.aggregator.").replace("upsample", "cost_head.upsample")
        assert torch.equal(converted[ours], value), key

    DetectionCheckpointer(target).load(str(tmp_path / "out" / "sammi.pth"))
    for key, value in target.state_dict().items():
        assert torch.equal(value, converted[key]), key
    assert target.cost_head.aggregator.layers[0].swin_block.block_2.attn_mask.shape == (4, 144, 144)


def test_pure_mapping_drops_documented_extras_and_rejects_unknown():
    sd = {
        "sem_seg_head.predictor.clip_model.visual.proj": torch.zeros(2, 2),
        "sem_seg_head.predictor.transformer.head.weight": torch.zeros(1),
        "upsample1.weight": torch.zeros(1),
        "upsample2.bias": torch.zeros(1),
        "pixel_mean": torch.zeros(3),
        "clip_pixel_std": torch.zeros(3),
    }
    out, report = convert_catseg_state_dict(sd)
    assert set(out) == {"clip.model.visual.proj", "cost_head.aggregator.head.weight", "cost_head.upsample1.weight",
                        "cost_head.upsample2.bias"}
    assert sorted(report.dropped) == ["clip_pixel_std", "pixel_mean"]
    assert report.mapped == {"clip.model.": 1, "cost_head.aggregator.": 1, "cost_head.upsample1.": 1,
                             "cost_head.upsample2.": 1}
    assert sammi_to_catseg_state_dict(out) == {k: v for k, v in sd.items() if "pixel" not in k}

    with pytest.raises(ValueError, match="no SAM-MI counterpart"):
        convert_catseg_state_dict({**sd, "sem_seg_head.extra.weight": torch.zeros(1)})
    out, report = convert_catseg_state_dict({**sd, "sem_seg_head.extra.weight": torch.zeros(1)}, allow_unmapped=True)
    assert report.unmapped == ["sem_seg_head.extra.weight"] and len(out) == 4
    with pytest.raises(ValueError, match="v1 checkpoint"):
        convert_catseg_state_dict({**sd, "backbone.res2.0.conv1.weight": torch.zeros(1)})


def test_unwrap_checkpoint():
    sd = {"upsample1.weight": torch.zeros(1)}
    assert unwrap_checkpoint({"model": sd, "iteration": 3}) == sd
    assert unwrap_checkpoint(sd) == sd
    with pytest.raises(ValueError, match="state dict"):
        unwrap_checkpoint([1, 2])
