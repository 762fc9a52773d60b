"""Pascal-Context-59 and -459 (validation sets), under CAT-Seg's names and layout.

PC-459 ignore label (a choice): CAT-Seg registers 459, SAN / MESS 65535. The prepared labels are
``LabelMap - 1`` in 0..458, so neither value occurs in CAT-Seg-prepared data. We register 65535 (the
value our ``prepare_pascal_context_459.py`` writes for unlabelled pixels, as ADE-847 does). A file holding
459 is rejected with a message naming it by the ground-truth check every evaluator applies
(``sam_mi/evaluation/ground_truth.py``): detectron2's SemSegEvaluator would count it as ignored, but any
id outside the classes is treated as an error, never guessed.
"""
from .class_names import PASCAL_CONTEXT_59_CLASSES, PASCAL_CONTEXT_459_CLASSES
from .register_common import SemSegSplit, register_split

PASCAL_CONTEXT_SPLITS = [
    SemSegSplit(
        name="context_59_test_sem_seg",
        image_dir="VOCdevkit/VOC2010/JPEGImages",
        shared_image_dir=True,  # JPEGImages holds every split
        gt_dir="VOCdevkit/VOC2010/annotations_detectron2/pc59_val",
        stuff_classes=PASCAL_CONTEXT_59_CLASSES,
        prepare="python datasets/prepare_pascal_context_59.py",
    ),
    SemSegSplit(
        name="context_459_test_sem_seg",
        image_dir="VOCdevkit/VOC2010/JPEGImages",
        shared_image_dir=True,  # JPEGImages holds every split
        gt_dir="VOCdevkit/VOC2010/annotations_detectron2/pc459_val",
        stuff_classes=PASCAL_CONTEXT_459_CLASSES,
        gt_ext=".tif",
        ignore_label=65535,
        prepare="python datasets/prepare_pascal_context_459.py",
    ),
]

for _split in PASCAL_CONTEXT_SPLITS:
    register_split(_split)
