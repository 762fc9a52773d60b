"""Prompt templates, class-name handling and the per-vocabulary text-embedding cache (cvlab-kaist/CAT-Seg
cat_seg/modeling/transformer/cat_seg_predictor.py, cat_seg/third_party/imagenet_templates.py).

The class embeddings ``E_t`` of the cost volume (SAM-MI Sec. 3.1, following CAT-Seg) are CLIP text
embeddings of one prompt per (class, template).
"""
from collections import OrderedDict
from typing import Dict, Hashable, List, Optional, Sequence, Tuple

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES
from torch import Tensor

__all__ = ["PROMPT_TEMPLATES", "get_templates", "first_synonym", "build_prompts", "TextEmbeddingCache"]

_SINGLE = ("A photo of a {} in the scene",)


def _as_format_strings(templates: Sequence) -> Tuple[str, ...]:
    # open_clip stores the OpenAI templates as lambdas; calling them with "{}" gives back the format string.
    return tuple(t("{}") for t in templates)


PROMPT_TEMPLATES: Dict[str, Tuple[str, ...]] = {
    # CAT-Seg v2's shipped configs (ViT-B and ViT-L): P = 1.
    "single": _SINGLE,
    # CAT-Seg's IMAGENET_TEMPLATES_SELECT = CLIP's 7 "selected" ImageNet templates + the scene prompt (P = 8).
    "imagenet_select": _as_format_strings(SIMPLE_IMAGENET_TEMPLATES) + _SINGLE,
    # The 80 OpenAI ImageNet templates (P = 80), in OpenAI's order (= CAT-Seg's IMAGENET_TEMPLATES).
    "imagenet": _as_format_strings(OPENAI_IMAGENET_TEMPLATES),
}


def get_templates(name: str) -> Tuple[str, ...]:
    """Template tuple for a ``MODEL.SAM_MI.CLIP.PROMPT_TEMPLATES`` value."""
    if name not in PROMPT_TEMPLATES:
        raise ValueError(f"unknown prompt templates {name!r}; choose one of {sorted(PROMPT_TEMPLATES)}")
    return PROMPT_TEMPLATES[name]


def first_synonym(class_name: str) -> str:
    """``"person, individual, someone"`` -> ``"person"``.

    CAT-Seg v2 behaviour: class-name JSONs (e.g. ADE-847, 217 entries) list synonyms separated by ", ",
    and only the first one is put into the prompt.  The split is on ", " exactly (a comma without a
    following space is part of the name), and the name is otherwise left untouched, as in CAT-Seg."""
    return class_name.split(", ")[0] if ", " in class_name else class_name


def build_prompts(class_names: Sequence[str], templates: Sequence[str]) -> List[str]:
    """T class names x P templates -> T*P prompts, class-major (prompt t*P + p = template p of class t)."""
    if isinstance(class_names, str):
        raise TypeError("class_names must be a sequence of class names, not a single string")
    if len(class_names) == 0:
        raise ValueError(
            "empty vocabulary: encode_text needs at least one class name (check the dataset metadata's "
            "stuff_classes / vocabulary or MODEL.SAM_MI.VOCABULARY_JSON)"
        )
    bad = [n for n in class_names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ValueError(f"class names must be non-empty strings, got {bad[:5]}")
    return [template.format(first_synonym(name)) for name in class_names for template in templates]


class TextEmbeddingCache:
    """Eval-mode cache of text embeddings, one entry per vocabulary (never a single slot).

    Entries are keyed by ``key`` (the class-name tuple and the templates) and remember a ``version``
    (the text encoder's weight versions): an entry computed with other weights is never returned.
    At most ``max_entries`` vocabularies are kept (least recently used dropped first).
    """

    def __init__(self, max_entries: int = 16) -> None:
        self.max_entries = max_entries
        self._entries: "OrderedDict[Hashable, Tuple[Hashable, Tensor]]" = OrderedDict()

    def get(self, key: Hashable, version: Hashable) -> Optional[Tensor]:
        entry = self._entries.get(key)
        if entry is None or entry[0] != version:
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: Hashable, version: Hashable, value: Tensor) -> None:
        self._entries[key] = (version, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries
