"""COCO-Stuff-171 (the training set of the OVSS protocol), under CAT-Seg's names and layout."""
from .class_names import COCO_STUFF_171_CLASSES
from .register_common import SemSegSplit, register_split

_PREPARE = "python datasets/prepare_coco_stuff.py"

COCO_STUFF_SPLITS = [
    SemSegSplit(
        name=f"coco_2017_{name}_stuff_all_sem_seg",
        image_dir=f"coco-stuff/images/{folder}",
        gt_dir=f"coco-stuff/annotations_detectron2/{folder}",
        stuff_classes=COCO_STUFF_171_CLASSES,
        prepare=_PREPARE,
    )
    # CAT-Seg calls COCO's val2017 split "test"
    for name, folder in [("train", "train2017"), ("test", "val2017")]
]

for _split in COCO_STUFF_SPLITS:
    register_split(_split)
