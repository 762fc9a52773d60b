"""Pascal-Context-59 and -459 (validation sets), under CAT-Seg's names and layout.

PC-459 ignore label (a choice): CAT-Seg registers 459, SAN / MESS 65535. The prepared labels are
``LabelMap - 1`` in 0..458, so neither value occurs in CAT-Seg-prepared data. We register 65535 (the
value our ``prepare_pascal_context_459.py`` writes for unlabelled pixels, as ADE-847 does), and a file
written with 459 is still scored correctly by detectron2's SemSegEvaluator: it moves ignore pixels to
index ``num_classes`` = 459, the column it excludes, so a stored 459 lands there as well.
"""
from .class_names import PASCAL_CONTEXT_59_CLASSES, PASCAL_CONTEXT_459_CLASSES
from .register_common import SemSegSplit, register_split

PASCAL_CONTEXT_SPLITS = [
    SemSegSplit(
        name="context_59_test_sem_seg",
        image_dir="VOCdevkit/VOC2010/JPEGImages",
        gt_dir="VOCdevkit/VOC2010/annotations_detectron2/pc59_val",
        stuff_classes=PASCAL_CONTEXT_59_CLASSES,
        prepare="python datasets/prepare_pascal_context_59.py",
    ),
    SemSegSplit(
        name="context_459_test_sem_seg",
        image_dir="VOCdevkit/VOC2010/JPEGImages",
        gt_dir="VOCdevkit/VOC2010/annotations_detectron2/pc459_val",
        stuff_classes=PASCAL_CONTEXT_459_CLASSES,
        gt_ext=".tif",
        ignore_label=65535,
        prepare="python datasets/prepare_pascal_context_459.py",
    ),
]

for _split in PASCAL_CONTEXT_SPLITS:
    register_split(_split)
