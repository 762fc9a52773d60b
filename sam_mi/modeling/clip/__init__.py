"""CLIP for SAM-MI / CAT-Seg: open_clip models with split Q/K/V attention, dense image features, text
embeddings (arXiv 2511.20027 Sec. 3.1; cvlab-kaist/CAT-Seg cat_seg/modeling/transformer/cat_seg_predictor.py)."""
from .attention import SplitQKVAttention, split_attention_, split_in_proj_weights
from .build import (
    CLIPWeightsNotFoundError,
    apply_finetune_policy,
    build_clip_model,
    is_trainable,
    load_clip_state_dict,
    register_model_configs,
    resolve_pretrained,
)
from .dense import DenseCLIP, build_dense_clip, resize_pos_embed
from .text import PROMPT_TEMPLATES, build_prompts, first_synonym

register_model_configs()  # makes "sam-mi-tiny" known to open_clip.create_model / get_tokenizer

__all__ = [
    "DenseCLIP",
    "build_dense_clip",
    "build_clip_model",
    "PROMPT_TEMPLATES",
    "SplitQKVAttention",
    "split_attention_",
    "split_in_proj_weights",
    "CLIPWeightsNotFoundError",
    "apply_finetune_policy",
    "is_trainable",
    "load_clip_state_dict",
    "register_model_configs",
    "resolve_pretrained",
    "resize_pos_embed",
    "build_prompts",
    "first_synonym",
]
