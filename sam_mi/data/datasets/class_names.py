"""Class lists of the standard OVSS benchmarks, taken from maintained packages wherever one holds them.

Sources (every list states its own below):
- detectron2 ``builtin_meta``: the 80 COCO thing classes with their COCO ids, and the ADE20K-150 names.
- ``mess-benchmark`` (``mess.in_domain``, a copy of CAT-Seg's / OVSeg's lists): ADE20K-847 (names + ADE
  full ids), Pascal-Context-59, Pascal-Context-459, Pascal VOC-20, and the 60 raw Pascal-Context ids.
- Written out here only where no installed package has the list, each naming its source: the 91
  COCO-Stuff stuff names, CAT-Seg's ADE-150 prompt list (``datasets/ade150.json``) and the 39 context
  names of CAT-Seg's ``datasets/voc20b.json``.

Note: importing the ``mess.in_domain.datasets`` modules registers MESS's aliases of these benchmarks
(``ade20k_full_sem_seg_val``, ``pascal_context_{59,459}_sem_seg_val``, ``voc_2012_sem_seg_val[_bg]``) in
detectron2's catalogs as a side effect. That registration only stores paths (no disk access) and the names
do not collide with ours, so it is harmless.
"""
from typing import Dict, List, Tuple

import numpy as np
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES, COCO_CATEGORIES
from mess.in_domain.datasets.register_ade20k_full import ADE20K_SEM_SEG_FULL_CATEGORIES
from mess.in_domain.datasets.register_pascal_context import PASCALCONTEX59_NAMES, PASCALCONTEX459_NAMES
from mess.in_domain.datasets.register_pascal_voc import PASCAL_VOC_CLASSES

__all__ = [
    "COCO_STUFF_171_CLASSES",
    "COCO_STUFF_171_IDS",
    "ADE20K_150_CLASSES",
    "ADE20K_150_VOCABULARY",
    "ADE20K_847_CLASSES",
    "ADE20K_847_IDS",
    "PASCAL_CONTEXT_59_CLASSES",
    "pascal_context_59_raw_ids",
    "PASCAL_CONTEXT_459_CLASSES",
    "VOC_20_CLASSES",
    "VOC_20_BACKGROUND_CLASSES",
    "VOC_20B_VOCABULARY",
    "SYNTHETIC_STUFF_CLASSES",
    "id_lookup_table",
]

# ----------------------------------------------------------------------------------------- COCO-Stuff
# Things: detectron2's COCO_CATEGORIES entries with isthing=1 (80 classes). COCO-Stuff's stuffthingmaps
# store the 0-based COCO id (COCO id - 1), so those are the raw values of the 80 thing classes.
_COCO_THINGS = [c for c in COCO_CATEGORIES if c["isthing"] == 1]
# Stuff: COCO-Stuff's 91 stuff classes (0-based ids 91..181), which detectron2 only has in merged
# (panoptic) form. Written out from COCO-Stuff's labels.txt (github.com/nightrome/cocostuff), in the same
# order and spelling as CAT-Seg's datasets/coco.json entries 80..170.
_COCO_STUFF_NAMES = [
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard",
    "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard",
    "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone",
    "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit", "furniture-other", "grass",
    "gravel", "ground-other", "hill", "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss",
    "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic",
    "platform", "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug", "salad",
    "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable", "wall-brick",
    "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "waterdrops", "window-blind", "window-other", "wood",
]
COCO_STUFF_171_CLASSES: List[str] = [c["name"] for c in _COCO_THINGS] + _COCO_STUFF_NAMES
# Raw stuffthingmap value of each train id (train id = position): sorted, things first.
COCO_STUFF_171_IDS: List[int] = [c["id"] - 1 for c in _COCO_THINGS] + list(range(91, 182))

# ------------------------------------------------------------------------------------------- ADE20K
# Evaluated class names: detectron2's ADE20K_SEM_SEG_CATEGORIES (with synonyms, e.g. "road, route").
ADE20K_150_CLASSES: List[str] = list(ADE20K_SEM_SEG_CATEGORIES)
# Prompts: CAT-Seg's datasets/ade150.json (= the first names of ADE's objectInfo150), which differs from
# detectron2's first synonyms for 10 classes ("windowpane" vs "window ", "bathtub" vs "tub", ...). CAT-Seg's
# published numbers use this list, so it is the vocabulary. Kept verbatim, including "bed " (CLIP's
# tokenizer strips the trailing space). No installed package holds this list.
ADE20K_150_VOCABULARY: List[str] = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed ", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence",
    "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column",
    "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator",
    "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]
# ADE20K-847 (mess-benchmark, = CAT-Seg's datasets/ade847.json): names (synonyms joined by ", ") and the
# ADE full object ids that prepare_ade20k_full.py maps to train ids 0..846.
_ADE847 = sorted(ADE20K_SEM_SEG_FULL_CATEGORIES, key=lambda c: c["trainId"])
ADE20K_847_CLASSES: List[str] = [c["name"] for c in _ADE847]
ADE20K_847_IDS: List[int] = [c["id"] for c in _ADE847]

# ---------------------------------------------------------------------------------- Pascal Context
# mess-benchmark's copies of CAT-Seg's datasets/pc59.json and datasets/pc459.json.
PASCAL_CONTEXT_59_CLASSES: List[str] = list(PASCALCONTEX59_NAMES)
PASCAL_CONTEXT_459_CLASSES: List[str] = list(PASCALCONTEX459_NAMES)


def pascal_context_59_raw_ids() -> List[int]:
    """The 60 raw Pascal-Context (459-label) ids of PC-59, sorted: id 0 (background) then the 59 classes.

    Source: mess-benchmark's ``prepare_pascal_context_59._mapping`` (CAT-Seg uses the same list). The
    import is deferred (a function, not a constant) because that module imports ``gdown`` for its
    download helper, which ``import sam_mi`` should not pay for.
    """
    from mess.in_domain.prepare_datasets.prepare_pascal_context_59 import _mapping

    return [int(i) for i in np.sort(np.asarray(_mapping))]


# --------------------------------------------------------------------------------------- Pascal VOC
VOC_20_CLASSES: List[str] = list(PASCAL_VOC_CLASSES)  # mess-benchmark (= CAT-Seg's voc20.json)
# VOC-20b is *evaluated* on 21 classes: the 20 VOC classes + background (index 20).
VOC_20_BACKGROUND_CLASSES: List[str] = VOC_20_CLASSES + ["background"]
# ... but *prompted* with CAT-Seg's datasets/voc20b.json: the 20 VOC classes, then 39 Pascal-Context-59
# names whose predictions all count as background (written out from voc20b.json; no package has it).
_VOC20B_CONTEXT = [
    "bag", "bed", "bench", "book", "building", "cabinet", "ceiling", "cloth", "computer", "cup", "door",
    "fence", "floor", "flower", "food", "grass", "ground", "keyboard", "light", "mountain", "mouse",
    "curtain", "platform", "sign", "plate", "road", "rock", "shelves", "sidewalk", "sky", "snow",
    "bedclothes", "track", "tree", "truck", "wall", "water", "window", "wood",
]
VOC_20B_VOCABULARY: List[str] = VOC_20_CLASSES + _VOC20B_CONTEXT

# ---------------------------------------------------------------------------------------- synthetic
# sam_mi.data.synthetic draws one colour + texture per class; the names are real words so that a CLIP
# text encoder gives them distinct embeddings.
SYNTHETIC_STUFF_CLASSES: List[str] = ["sky", "grass", "water", "sand", "brick", "snow", "wood"]


def id_lookup_table(raw_ids: List[int], ignore: int, size: int, dtype=np.uint8) -> np.ndarray:
    """A lookup table ``lut[raw_id] = train_id`` (position in ``raw_ids``), every other entry ``ignore``.

    Used by the preparation scripts to remap a whole label map with one indexing op.
    """
    lut = np.full(size, ignore, dtype=dtype)
    lut[np.asarray(raw_ids, dtype=np.int64)] = np.arange(len(raw_ids))
    return lut


EXPECTED_COUNTS: Dict[str, Tuple[List[str], int]] = {
    "COCO_STUFF_171_CLASSES": (COCO_STUFF_171_CLASSES, 171),
    "ADE20K_150_CLASSES": (ADE20K_150_CLASSES, 150),
    "ADE20K_150_VOCABULARY": (ADE20K_150_VOCABULARY, 150),
    "ADE20K_847_CLASSES": (ADE20K_847_CLASSES, 847),
    "PASCAL_CONTEXT_59_CLASSES": (PASCAL_CONTEXT_59_CLASSES, 59),
    "PASCAL_CONTEXT_459_CLASSES": (PASCAL_CONTEXT_459_CLASSES, 459),
    "VOC_20_CLASSES": (VOC_20_CLASSES, 20),
    "VOC_20B_VOCABULARY": (VOC_20B_VOCABULARY, 59),
}
for _key, (_names, _count) in EXPECTED_COUNTS.items():
    # a package update that changed a list must fail loudly at import, not shift every label silently
    if len(_names) != _count:
        raise ImportError(f"{_key} has {len(_names)} names, expected {_count}: check the source package")
