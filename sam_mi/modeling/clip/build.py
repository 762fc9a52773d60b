"""Construction of the CLIP model through open_clip, pretrained-weight loading, fine-tuning policy.

The model is always built by ``open_clip.create_model`` (random init), its attentions are then split into
separate Q/K/V Parameters (``attention.py``) and the weights, if any, are loaded by us.  Loading ourselves
(instead of passing ``pretrained`` to open_clip) lets one code path accept OpenAI JIT archives, OpenAI or
open_clip state dicts, safetensors, and checkpoints that hold CLIP under a prefix (a SAM-MI checkpoint's
``clip.model.``, a CAT-Seg one's ``sem_seg_head.predictor.clip_model.``), and give a clear error offline.

Downloads (a choice): nothing is downloaded at run time unless asked for.  A pretrained tag ("openai") is
looked up in the local caches only; when it is not there the error names the file to put where and the
command that downloads it, at once (open_clip's own download would otherwise spend about a minute
retrying without network).  ``SAM_MI_ALLOW_DOWNLOAD=1`` (or ``allow_download=True``) lets open_clip
download it; ``HF_HUB_OFFLINE=1`` forbids it even then.
"""
import logging
import os
import warnings
from pathlib import Path
from typing import Dict, Optional

import open_clip
import torch
from open_clip.pretrained import download_pretrained, get_pretrained_cfg
from torch import Tensor, nn

from ...utils.checkpoint_io import is_torchscript_archive, load_checkpoint_file
from .attention import split_attention_, split_in_proj_weights

__all__ = [
    "MODEL_CONFIG_DIR",
    "CLIPWeightsNotFoundError",
    "downloads_allowed",
    "register_model_configs",
    "canonical_model_name",
    "resolve_pretrained",
    "load_clip_state_dict",
    "load_clip_weights",
    "is_trainable",
    "apply_finetune_policy",
    "build_clip_model",
]

logger = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
FINETUNE_POLICIES = ("attention", "full", "frozen")
# CAT-Seg / OpenAI spellings -> open_clip model names.
_ALIASES = {"ViT-B/16": "ViT-B-16", "ViT-L/14@336px": "ViT-L-14-336", "ViT-L/14": "ViT-L-14"}
# Non-parameter entries of OpenAI JIT archives.
_JIT_EXTRAS = ("input_resolution", "context_length", "vocab_size")


class CLIPWeightsNotFoundError(FileNotFoundError):
    """Pretrained CLIP weights are neither on disk nor downloadable."""


def register_model_configs() -> None:
    """Register this package's open_clip model configs (``sam-mi-tiny``); idempotent."""
    names = {p.stem for p in MODEL_CONFIG_DIR.glob("*.json")}
    if not names.issubset(open_clip.list_models()):
        open_clip.add_model_config(MODEL_CONFIG_DIR)


def canonical_model_name(model_name: str) -> str:
    """Map CAT-Seg spellings to open_clip's and check that open_clip knows the model."""
    register_model_configs()
    name = _ALIASES.get(model_name, model_name)
    if name not in open_clip.list_models():
        raise ValueError(
            f"unknown CLIP model {model_name!r}: use an open_clip model name such as 'ViT-B-16', "
            f"'ViT-L-14-336' or 'sam-mi-tiny' (see open_clip.list_models())"
        )
    return name


_CHECKPOINT_KEY = "MODEL.SAM_MI.CLIP.PRETRAINED"
_EXPECTED = (
    "a CLIP checkpoint: OpenAI's TorchScript archive (e.g. ViT-B-16.pt), an open_clip / OpenAI state dict "
    "(.pt/.pth/.bin/.safetensors), or a SAM-MI / CAT-Seg checkpoint that holds CLIP"
)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def downloads_allowed() -> bool:
    """Whether run time may download CLIP weights: only with ``SAM_MI_ALLOW_DOWNLOAD=1`` and without
    ``HF_HUB_OFFLINE`` / ``SAM_MI_OFFLINE`` (see the module docstring)."""
    if _env_true("HF_HUB_OFFLINE") or _env_true("SAM_MI_OFFLINE"):
        return False
    return _env_true("SAM_MI_ALLOW_DOWNLOAD")


def _missing_weights_message(model_name: str, pretrained: str, cfg: dict, cache_dir: Optional[str]) -> str:
    lines = [f"CLIP weights for model {model_name!r} with pretrained={pretrained!r} are not available."]
    url = cfg.get("url", "")
    if url:
        target = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        lines += [
            f"Expected file: {target} (open_clip's and CAT-Seg's cache location). Download it with",
            f"  curl -L --create-dirs -o {target} {url}",
            "  (or run once with SAM_MI_ALLOW_DOWNLOAD=1 to let open_clip download it), or put it anywhere and "
            "point the config at",
            f"  the file: MODEL.SAM_MI.CLIP.PRETRAINED /path/to/{os.path.basename(url)}",
        ]
    if cfg.get("hf_hub"):
        lines.append(
            f"Alternatively put open_clip's Hugging Face copy (repo {cfg['hf_hub'].rstrip('/')}, file "
            "open_clip_pytorch_model.bin or open_clip_model.safetensors) in the Hugging Face cache, or pass the "
            "file path as MODEL.SAM_MI.CLIP.PRETRAINED."
        )
    lines.append("Use MODEL.SAM_MI.CLIP.PRETRAINED '' for a randomly initialised CLIP (tests only).")
    return "\n".join(lines)


def resolve_pretrained(
    model_name: str, pretrained: str, cache_dir: Optional[str] = None, allow_download: Optional[bool] = None
) -> str:
    """Local file holding the weights named by ``pretrained`` (a file path or an open_clip tag like "openai").

    Order for a tag: the OpenAI ``.pt`` in ``cache_dir`` (default ``~/.cache/clip``); open_clip's Hugging Face
    copy already in the HF cache; then a download through open_clip only if ``allow_download`` (default:
    :func:`downloads_allowed`, i.e. ``SAM_MI_ALLOW_DOWNLOAD=1``).
    Raises ``CLIPWeightsNotFoundError`` at once, without touching the network, saying which file to
    download, the command that does it and how to point the config at it.
    """
    name = canonical_model_name(model_name)
    if os.path.isfile(pretrained):
        return pretrained
    cfg = get_pretrained_cfg(name, pretrained) if pretrained else {}
    if not cfg:
        looks_like_path = os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))
        if looks_like_path:
            raise CLIPWeightsNotFoundError(
                f"CLIP checkpoint file {pretrained!r} does not exist.\n"
                + _missing_weights_message(name, "openai", get_pretrained_cfg(name, "openai") or {}, cache_dir)
            )
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ValueError(
            f"pretrained={pretrained!r} is neither a file nor an open_clip tag of {name!r} (tags: {tags}); "
            "give a checkpoint path, an open_clip tag such as 'openai', or '' for random initialisation"
        )
    url = cfg.get("url", "")
    if url:  # the OpenAI archive, where open_clip's URL download and CAT-Seg's clip.load put it
        local = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        if os.path.isfile(local):
            return local
    hf_hub = cfg.get("hf_hub", "")
    if hf_hub:
        from huggingface_hub import try_to_load_from_cache  # local lookup only, never the network

        repo_id, filename = os.path.split(hf_hub)
        for fname in [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]:
            hit = try_to_load_from_cache(repo_id, fname, cache_dir=cache_dir)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
    if allow_download is None:
        allow_download = downloads_allowed()
    message = _missing_weights_message(name, pretrained, cfg, cache_dir)
    if not allow_download:
        raise CLIPWeightsNotFoundError(
            message + "\n(Nothing is downloaded at run time: set SAM_MI_ALLOW_DOWNLOAD=1, with HF_HUB_OFFLINE and "
            "SAM_MI_OFFLINE unset, to allow it.)"
        )
    try:
        path = download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as e:  # network errors come in many types; all mean "not available"
        raise CLIPWeightsNotFoundError(f"{message}\n(Download failed: {type(e).__name__}: {e})") from e
    if not path or not os.path.isfile(path):
        raise CLIPWeightsNotFoundError(message)
    return path


def _strip_to_clip(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Keep the CLIP part of a (possibly larger) checkpoint, without its prefix."""
    anchors = [k for k in state_dict if k.endswith("visual.conv1.weight")]
    if len(anchors) != 1:
        raise ValueError(
            "checkpoint does not look like a ViT CLIP state dict: expected exactly one '*visual.conv1.weight' "
            f"key, found {len(anchors)}"
        )
    prefix = anchors[0][: -len("visual.conv1.weight")]
    return {
        k[len(prefix):]: v
        for k, v in state_dict.items()
        if k.startswith(prefix) and k[len(prefix):] not in _JIT_EXTRAS
    }


def load_clip_state_dict(path: str) -> Dict[str, Tensor]:
    """Read CLIP weights from an OpenAI JIT archive, a state dict (.pt/.pth/.bin, optionally wrapped in
    ``{"state_dict"|"model": ...}``, prefixed by ``module.``/``clip.model.``/CAT-Seg's prefix) or safetensors.
    Fused ``in_proj_weight`` entries are split into q/k/v (chunk(3)).  Returns a fp32-or-original-dtype dict."""
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            raw = load_file(path, device="cpu")
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{_CHECKPOINT_KEY} = {path!r} is not a readable safetensors file ({e}); it should be "
                             f"{_EXPECTED}") from None
    elif is_torchscript_archive(path):  # OpenAI distributes TorchScript archives (ViT-B-16.pt, ViT-L-14-336px.pt)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
                raw = torch.jit.load(path, map_location="cpu").state_dict()
        except RuntimeError as e:
            raise ValueError(f"{_CHECKPOINT_KEY} = {path!r}: damaged TorchScript archive ({str(e).splitlines()[0]}); "
                             f"it should be {_EXPECTED}") from None
    else:
        raw = load_checkpoint_file(path, _CHECKPOINT_KEY, _EXPECTED)
    for wrapper in ("state_dict", "model"):
        if isinstance(raw, dict) and isinstance(raw.get(wrapper), dict):
            raw = raw[wrapper]
    if not isinstance(raw, dict):
        raise ValueError(f"{_CHECKPOINT_KEY} = {path!r} holds a {type(raw).__name__}; it should be {_EXPECTED}")
    try:
        return split_in_proj_weights(_strip_to_clip(dict(raw)))
    except ValueError as e:
        raise ValueError(f"{_CHECKPOINT_KEY} = {path!r}: {e}; it should be {_EXPECTED}") from None


def load_clip_weights(model: nn.Module, state_dict: Dict[str, Tensor], source: str = "checkpoint") -> None:
    """Load a CLIP state dict (split q/k/v layout) into our model, strictly, with a readable error."""
    state_dict = split_in_proj_weights(state_dict)
    # Non-persistent buffers (open_clip's causal attn_mask) are rebuilt by the model; TorchScript archives
    # save them anyway.
    persistent = model.state_dict().keys()
    for name, _ in model.named_buffers():
        if name not in persistent:
            state_dict.pop(name, None)
    if "logit_scale" in state_dict and state_dict["logit_scale"].shape != model.logit_scale.shape:
        state_dict["logit_scale"] = state_dict["logit_scale"].reshape(model.logit_scale.shape)
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise RuntimeError(f"{source} does not fit this CLIP architecture (wrong MODEL_NAME?): {e}") from e
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(
            f"{source} does not fit this CLIP architecture (wrong MODEL_NAME?): "
            f"missing keys {result.missing_keys[:10]}, unexpected keys {result.unexpected_keys[:10]}"
        )


def is_trainable(name: str, policy: str) -> bool:
    """Fine-tuning policy for the CLIP parameter ``name`` (cvlab-kaist/CAT-Seg cat_seg/cat_seg_model.py).

    "attention": CAT-Seg v2's rule -- trainable iff the name contains ``transformer`` and ``attn`` and
    (``q_proj`` or ``v_proj``): exactly ``attn.q_proj_weight`` / ``attn.v_proj_weight`` of every block of
    both encoders (no biases, no K, no out_proj).  "full": everything.  "frozen": nothing.
    (CAT-Seg silently freezes on an unknown value; we raise.)"""
    if policy == "attention":
        return "transformer" in name and "attn" in name and ("q_proj" in name or "v_proj" in name)
    if policy == "full":
        return True
    if policy == "frozen":
        return False
    raise ValueError(f"unknown CLIP fine-tuning policy {policy!r}; choose one of {FINETUNE_POLICIES}")


def apply_finetune_policy(model: nn.Module, policy: str) -> int:
    """Set ``requires_grad`` of every parameter of ``model`` by ``is_trainable``; returns #trainable params."""
    total = 0
    for name, param in model.named_parameters():
        param.requires_grad_(is_trainable(name, policy))
        total += param.numel() if param.requires_grad else 0
    return total


def build_clip_model(
    model_name: str,
    pretrained: str = "",
    quick_gelu: bool = True,
    cache_dir: Optional[str] = None,
    allow_download: Optional[bool] = None,
) -> nn.Module:
    """open_clip ``CLIP`` (fp32, CPU) with every attention split into q/k/v Parameters.

    Args:
        model_name: open_clip name ("ViT-B-16", "ViT-L-14-336", "sam-mi-tiny"; CAT-Seg spellings accepted).
        pretrained: "" (random init), an open_clip tag ("openai") or a local checkpoint file.
        quick_gelu: QuickGELU activations.  True by default because OpenAI's CLIP (and hence CAT-Seg and every
            checkpoint built on it) uses QuickGELU, while open_clip's plain "ViT-B-16" config uses nn.GELU.
        cache_dir / allow_download: see ``resolve_pretrained``.
    """
    name = canonical_model_name(model_name)
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # open_clip warns "initialized randomly" even though we load below
    try:
        model = open_clip.create_model(name, pretrained=None, force_quick_gelu=quick_gelu, device="cpu")
    finally:
        logging.disable(previous)
    if not isinstance(model, open_clip.CLIP) or not isinstance(model.visual, open_clip.transformer.VisionTransformer):
        raise ValueError(f"{name!r} is not a ViT CLIP with an OpenAI-style text tower; DenseCLIP needs one")
    if split_attention_(model) == 0:
        raise ValueError(f"{name!r} has no nn.MultiheadAttention to split (custom attention blocks unsupported)")
    if pretrained:
        path = resolve_pretrained(name, pretrained, cache_dir=cache_dir, allow_download=allow_download)
        logger.info("Loading CLIP weights for %s from %s", name, path)
        load_clip_weights(model, load_clip_state_dict(path), source=path)
    else:
        logger.info("CLIP %s randomly initialised (pretrained='')", name)
    return model
