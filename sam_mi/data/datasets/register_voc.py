"""Pascal VOC-20 and VOC-20b (validation set), under CAT-Seg's names and layout.

VOC-20b is evaluated on 21 classes (20 + "background", index 20; ``stuff_classes``) with
``evaluator_type="sem_seg_background"``, but prompted with CAT-Seg's 59 voc20b names (``vocabulary``):
the evaluator maps every predicted index >= 20 (the 39 context names) to background.
"""
from .class_names import VOC_20_BACKGROUND_CLASSES, VOC_20_CLASSES, VOC_20B_VOCABULARY
from .register_common import SemSegSplit, register_split

_PREPARE = "python datasets/prepare_voc.py"

VOC_SPLITS = [
    SemSegSplit(
        name="voc_2012_test_sem_seg",
        image_dir="VOCdevkit/VOC2012/JPEGImages",
        shared_image_dir=True,  # JPEGImages holds every split
        gt_dir="VOCdevkit/VOC2012/annotations_detectron2/val",
        stuff_classes=VOC_20_CLASSES,
        prepare=_PREPARE,
    ),
    SemSegSplit(
        name="voc_2012_test_background_sem_seg",
        image_dir="VOCdevkit/VOC2012/JPEGImages",
        shared_image_dir=True,  # JPEGImages holds every split
        gt_dir="VOCdevkit/VOC2012/annotations_detectron2_bg/val",
        stuff_classes=VOC_20_BACKGROUND_CLASSES,
        vocabulary=VOC_20B_VOCABULARY,
        evaluator_type="sem_seg_background",
        prepare=_PREPARE,
        extra_metadata={"background_class": len(VOC_20_CLASSES)},
    ),
]

for _split in VOC_SPLITS:
    register_split(_split)
