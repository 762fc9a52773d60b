"""A CAT-Seg-layout checkpoint, converted by tools/convert_catseg_checkpoint.py, loads into SAMMI: with no
missing/unexpected key into the SAM-less baseline (and its predictions become the source model's), and into
the SAM-MI configuration with only the new trained modules (TSPP, DMI) missing: frozen SAM comes from its own
checkpoint and is never part of SAM-MI's state dict."""
import os
import subprocess
import sys

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from conftest import REPO, tiny_cfg

from sam_mi.utils.catseg_compat import sammi_to_catseg_state_dict


def image():
    return {"image": torch.randint(0, 256, (3, 128, 144), generator=torch.Generator().manual_seed(3),
                                   dtype=torch.uint8), "height": 128, "width": 144}


def catseg_checkpoint(tmp_path):
    """A CAT-Seg v2 checkpoint (cvlab-kaist/CAT-Seg layout) of a tiny baseline with seed 1, converted."""
    torch.manual_seed(1)
    source = build_model(tiny_cfg("configs/tiny/sam_mi_tiny_baseline.yaml")).eval()
    raw = tmp_path / "model_base.pth"
    catseg = sammi_to_catseg_state_dict(source.state_dict())
    assert all(k.startswith(("sem_seg_head.predictor.", "upsample1.", "upsample2.")) for k in catseg)
    torch.save({"model": catseg, "iteration": 80000}, raw)
    out = tmp_path / "converted.pth"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools/convert_catseg_checkpoint.py"),
                           "--input", str(raw), "--output", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with torch.no_grad():
        reference = source([image()])[0]["sem_seg"]
    return str(out), reference


def load(model, path):
    """Load like detectron2 does, and return the missing / unexpected keys."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)["model"]
    result = model.load_state_dict(checkpoint, strict=False)
    DetectionCheckpointer(model).load(path)  # the path detectron2 users take must work too
    return result


def test_baseline_loads_without_missing_or_unexpected_keys(tmp_path, synthetic_root):
    path, reference = catseg_checkpoint(tmp_path)
    torch.manual_seed(2)
    model = build_model(tiny_cfg("configs/tiny/sam_mi_tiny_baseline.yaml")).eval()
    with torch.no_grad():
        before = model([image()])[0]["sem_seg"]
    result = load(model, path)
    assert result.missing_keys == [] and result.unexpected_keys == []
    with torch.no_grad():
        after = model([image()])[0]["sem_seg"]
    assert not torch.allclose(before, reference)
    assert torch.allclose(after, reference, atol=1e-5)


def test_sam_mi_config_misses_only_the_new_modules(tmp_path, synthetic_root):
    path, _ = catseg_checkpoint(tmp_path)
    model = build_model(tiny_cfg()).eval()
    result = load(model, path)
    assert result.unexpected_keys == []
    assert result.missing_keys
    assert {".".join(k.split(".")[:2]) for k in result.missing_keys} == {
        "prompter.head", "cost_head.dmi_low", "cost_head.dmi_high"}
