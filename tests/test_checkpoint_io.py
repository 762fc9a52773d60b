"""Checkpoint files that are not checkpoints: errors name file, key and expectation, never the unsafe load;
CLIP weights are never downloaded at run time unless asked for."""
import hashlib
import importlib.util
import os
import time

import numpy as np
import pytest
import torch

from sam_mi.modeling.clip import build as clip_build
from sam_mi.modeling.clip.build import CLIPWeightsNotFoundError, load_clip_state_dict, resolve_pretrained
from sam_mi.utils.checkpoint_io import CheckpointFileError, file_identity, load_checkpoint_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY, EXPECTED = "MODEL.SAM_MI.SAM.CHECKPOINT", "a SAM checkpoint (sam_vit_b_01ec64.pth)"


def _bad_files(tmp_path):
    """name -> (path, words the message must contain)."""
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.zeros(256)}}, good)
    data = good.read_bytes()
    files = {
        # fixed bytes (not os.urandom: a random first byte 0x80 would read as a pickle header)
        "random": (b"\x13\x37" + np.random.default_rng(0).bytes(4094), "not a PyTorch file"),
        "text": (b"model weights go here\n", "a text file"),
        "empty": (b"", "an empty file"),
        "truncated": (data[: len(data) // 2], "truncated or damaged zip archive"),
        "html": (b"<!DOCTYPE html><html><body>Sign in</body></html>", "HTML"),
        "lfs": (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n", "Git LFS pointer"),
    }
    out = {}
    for name, (content, words) in files.items():
        path = tmp_path / f"{name}.pth"
        path.write_bytes(content)
        out[name] = (str(path), words)
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "stats": np.zeros(3)}, pickled)  # numpy needs unpickling
    out["pickled"] = (str(pickled), "pickled Python objects")
    return out


def test_not_a_checkpoint_names_file_key_and_expectation(tmp_path):
    for name, (path, words) in _bad_files(tmp_path).items():
        with pytest.raises(CheckpointFileError) as err:
            load_checkpoint_file(path, KEY, EXPECTED)
        msg = str(err.value)
        assert path in msg and KEY in msg and EXPECTED in msg and words in msg, (name, msg)
        assert "weights_only" not in msg and "weights_only" not in repr(err.value.__cause__), (name, msg)
        assert err.value.__suppress_context__  # torch's advice is not shown in the traceback either
    with pytest.raises(FileNotFoundError, match=rf"{KEY}.*nope\.pth.*no such file.*sam_vit_b"):
        load_checkpoint_file(str(tmp_path / "nope.pth"), KEY, EXPECTED)
    assert torch.equal(load_checkpoint_file(str(tmp_path / "good.pth"), KEY, EXPECTED)["model"]["w"], torch.zeros(256))


def test_trust_pickle_is_explicit(tmp_path):
    path, _ = _bad_files(tmp_path)["pickled"]
    with pytest.raises(CheckpointFileError, match="--trust-pickle"):
        load_checkpoint_file(path, "--input", EXPECTED, unsafe_hint="re-run with --trust-pickle")
    loaded = load_checkpoint_file(path, "--input", EXPECTED, trust_pickle=True)
    assert isinstance(loaded["stats"], np.ndarray)


def test_file_identity_streams_sha256(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(os.urandom(3 * 1000 + 7))
    ident = file_identity(str(path), chunk_bytes=1000)
    assert ident["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and ident["size"] == 3007


# ------------------------------------------------------------------------------------------------ CLIP
def test_clip_pretrained_file_that_is_not_a_checkpoint(tmp_path):
    for name, (path, words) in _bad_files(tmp_path).items():
        with pytest.raises(ValueError) as err:
            load_clip_state_dict(path)
        msg = str(err.value)
        assert "MODEL.SAM_MI.CLIP.PRETRAINED" in msg and path in msg and "weights_only" not in msg, (name, msg)
    state = tmp_path / "not_clip.pth"
    torch.save({"w": torch.zeros(2)}, state)
    with pytest.raises(ValueError, match=r"CLIP.PRETRAINED.*not_clip\.pth.*visual\.conv1\.weight"):
        load_clip_state_dict(str(state))


def test_clip_tag_offline_by_default_fails_fast_without_network(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("download attempted")

    monkeypatch.setattr(clip_build, "download_pretrained", no_network)
    for var in ("HF_HUB_OFFLINE", "SAM_MI_OFFLINE", "SAM_MI_ALLOW_DOWNLOAD"):
        monkeypatch.delenv(var, raising=False)
    start = time.perf_counter()
    with pytest.raises(CLIPWeightsNotFoundError) as err:
        resolve_pretrained("ViT-B-16", "openai", cache_dir=str(tmp_path))
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    target = os.path.join(str(tmp_path), "ViT-B-16.pt")
    assert f"Expected file: {target}" in msg
    assert f"curl -L --create-dirs -o {target} https://openaipublic.azureedge.net/clip/models/" in msg
    assert "SAM_MI_ALLOW_DOWNLOAD=1" in msg
    # HF_HUB_OFFLINE wins over the switch
    monkeypatch.setenv("SAM_MI_ALLOW_DOWNLOAD", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CLIPWeightsNotFoundError, match="Nothing is downloaded"):
        resolve_pretrained("ViT-B-16", "openai", cache_dir=str(tmp_path))


def test_clip_download_only_with_the_switch(tmp_path, monkeypatch):
    calls = []

    def fake_download(cfg, cache_dir=None):
        calls.append(cfg["url"])
        path = os.path.join(cache_dir, "downloaded.pt")
        open(path, "wb").close()
        return path

    monkeypatch.setattr(clip_build, "download_pretrained", fake_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("SAM_MI_OFFLINE", raising=False)
    monkeypatch.setenv("SAM_MI_ALLOW_DOWNLOAD", "1")
    assert resolve_pretrained("ViT-B-16", "openai", cache_dir=str(tmp_path)).endswith("downloaded.pt")
    assert len(calls) == 1


# ------------------------------------------------------------------------------------------------ conversion tool
def _convert_tool():
    path = os.path.join(REPO, "tools", "convert_catseg_checkpoint.py")
    spec = importlib.util.spec_from_file_location("convert_catseg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_convert_tool_loads_safely_and_needs_trust_pickle(tmp_path):
    tool = _convert_tool()
    src = tmp_path / "model_base.pth"
    torch.save({"model": {"sem_seg_head.predictor.transformer.conv1.weight": torch.ones(2)},
                "meta": np.zeros(1)}, src)
    out = tmp_path / "out.pth"
    with pytest.raises(SystemExit) as err:
        tool.main(["--input", str(src), "--output", str(out)])
    msg = str(err.value)
    assert str(src) in msg and "--input" in msg and "--trust-pickle" in msg and "weights_only" not in msg
    assert not out.exists()
    assert tool.main(["--input", str(src), "--output", str(out), "--trust-pickle"]) == 0
    assert torch.equal(torch.load(out, weights_only=True)["model"]["cost_head.aggregator.conv1.weight"], torch.ones(2))
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(SystemExit, match=r"text\.pth' is a text file.*CAT-Seg v2 checkpoint"):
        tool.main(["--input", str(tmp_path / "text.pth"), "--output", str(out), "--trust-pickle"])


def test_checked_checkpointer_for_model_weights(tmp_path):
    from sam_mi.utils.checkpoint_io import CheckedCheckpointer

    model = torch.nn.Linear(2, 2)
    good = tmp_path / "model_final.pth"
    torch.save({"model": {"weight": torch.ones(2, 2), "bias": torch.zeros(2)}}, good)
    CheckedCheckpointer(model).load(str(good))
    assert torch.equal(model.weight, torch.ones(2, 2))
    for name, (path, words) in _bad_files(tmp_path).items():
        with pytest.raises(CheckpointFileError) as err:
            CheckedCheckpointer(model).load(path)
        msg = str(err.value)
        assert "MODEL.WEIGHTS" in msg and path in msg and "SAM-MI checkpoint" in msg and words in msg, (name, msg)
        assert "weights_only" not in msg
    with pytest.raises(FileNotFoundError, match=r"--weights / MODEL.WEIGHTS = .*nope\.pth.*no such file"):
        CheckedCheckpointer(model, config_key="--weights / MODEL.WEIGHTS").load(str(tmp_path / "nope.pth"))


def test_atomic_json_write_is_flushed_and_never_partial(tmp_path, monkeypatch):
    from sam_mi.utils import atomic_io

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(atomic_io.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    path = tmp_path / "sub" / "results.json"
    atomic_io.write_json_atomic(str(path), {"mIoU": 1.5})
    assert synced and json_load(path) == {"mIoU": 1.5}
    with pytest.raises(ValueError):
        atomic_io.write_json_atomic(str(path), {"mIoU": float("nan")})  # JSON has no NaN
    with pytest.raises(RuntimeError):
        with atomic_io.atomic_write(str(path)) as f:
            f.write('{"half": ')
            raise RuntimeError("killed")
    assert json_load(path) == {"mIoU": 1.5} and os.listdir(path.parent) == ["results.json"]


def json_load(path):
    import json

    with open(path) as f:
        return json.load(f)
