"""Smoke tests of the fast-path benchmarks (tools/benchmark_sam_decoding.py, tools/benchmark_aggregator.py)."""

import importlib.util
import json
import os

import torch

from catseg_reference import TINY, randomise_, tiny_inputs
from conftest import REPO
from sam_mi.modeling.aggregator import Aggregator


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sam_benchmark_modes_report_times_errors_and_masks(tmp_path):
    tool = _tool("benchmark_sam_decoding")
    enc = tool.main(["encoder", "--model-type", "tiny", "--image-size", "128", "--repeats", "1", "--clock", "process",
                     "--json", str(tmp_path / "enc.json")])
    assert enc["clock"] == "process"
    assert enc["sdpa"]["max_abs_err"] < 1e-4 and enc["sdpa"]["mask_iou"] > 0.999 and enc["original"]["ms"] > 0
    assert json.loads((tmp_path / "enc.json").read_text())["sdpa_amp"]["ms"] > 0
    dec = tool.main(["decoder", "--embedding", "8", "--points", "6", "--repeats", "1"])
    modes = dec["modes"]
    assert set(modes) == {f"{d}/{m}" for d in ("reference", "fast") for m in ("amg", "best", "single")} | {
        "fast/best 1 pass"
    }
    assert modes["fast/best 1 pass"]["masks"] == modes["fast/best"]["masks"]
    assert modes["fast/amg"]["masks"] == modes["reference/amg"]["masks"] == 18  # NMS off: 3 per point
    assert modes["fast/best"]["masks"] == 6 and "transformer" in modes["fast/best"]["stages_ms"]
    grid = tool.main(["grid", "--model-type", "tiny", "--image-size", "128", "--grid", "4", "--repeats", "1"])
    assert grid["SamAutomaticMaskGenerator"]["ms"] > 0 and grid["ours (fast decoder, SDPA attention)"]["masks"] >= 1


def test_aggregator_baseline_is_loaded_from_git_and_agrees(tmp_path):
    tool = _tool("benchmark_aggregator")
    assert set(tool.CLOCKS) == {"wall", "process"}
    baseline_cls = tool.load_baseline("HEAD", str(tmp_path))
    assert baseline_cls.__module__.startswith("sam_mi_aggregator_baseline")
    current = Aggregator(**TINY)
    randomise_(current, 4)
    base = baseline_cls(**TINY)
    base.load_state_dict(current.state_dict())
    inputs = tiny_inputs(1, 5)
    with torch.no_grad():
        torch.testing.assert_close(current(*inputs), base(*inputs), rtol=1e-5, atol=1e-5)
