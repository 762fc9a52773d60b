#!/usr/bin/env python
"""Train and evaluate SAM-MI (and its CAT-Seg baseline) with detectron2 (the engine is sam_mi.engine).

    python tools/train_net.py --config-file configs/coco-stuff-171/sam_mi_vitb16_384_stage1.yaml --num-gpus 4
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
"""
from detectron2.engine import default_argument_parser, launch

from sam_mi.engine import train_or_evaluate

if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        train_or_evaluate,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
