"""ADE20K-150 and ADE20K-847 (validation sets), under CAT-Seg's names and layout."""
from .class_names import ADE20K_150_CLASSES, ADE20K_150_VOCABULARY, ADE20K_847_CLASSES
from .register_common import SemSegSplit, register_split

ADE20K_SPLITS = [
    SemSegSplit(
        name="ade20k_150_test_sem_seg",
        image_dir="ADEChallengeData2016/images/validation",
        gt_dir="ADEChallengeData2016/annotations_detectron2/validation",
        stuff_classes=ADE20K_150_CLASSES,
        vocabulary=ADE20K_150_VOCABULARY,
        prepare="python datasets/prepare_ade20k_150.py",
    ),
    SemSegSplit(
        name="ade20k_full_sem_seg_freq_val_all",
        image_dir="ADE20K_2021_17_01/images_detectron2/validation",
        gt_dir="ADE20K_2021_17_01/annotations_detectron2/validation",
        stuff_classes=ADE20K_847_CLASSES,
        # 847 classes do not fit uint8: labels are uint16 TIFFs with 65535 = unlabelled
        gt_ext=".tif",
        ignore_label=65535,
        prepare="python datasets/prepare_ade20k_full.py",
    ),
]

for _split in ADE20K_SPLITS:
    register_split(_split)
