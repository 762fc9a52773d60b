"""The synthetic COCO-Stuff-like set written by ``sam_mi.data.synthetic`` (tests, smoke training)."""
from .class_names import SYNTHETIC_STUFF_CLASSES
from .register_common import SemSegSplit, register_split

SYNTHETIC_SPLITS = [
    SemSegSplit(
        name=f"synthetic_stuff_{name}_sem_seg",
        image_dir=f"synthetic-stuff/images/{folder}",
        gt_dir=f"synthetic-stuff/annotations_detectron2/{folder}",
        stuff_classes=SYNTHETIC_STUFF_CLASSES,
        prepare="python -m sam_mi.data.synthetic",
    )
    for name, folder in [("train", "train2017"), ("val", "val2017")]
]

for _split in SYNTHETIC_SPLITS:
    register_split(_split)
