#!/usr/bin/env python
"""Per-stage inference latency of SAM-MI for the three point-sampling modes of Table 5.

    python tools/benchmark_latency.py --config-file configs/coco-stuff-171/sam_mi_vitb16_384_stage2.yaml \
        --mode all --iters 3 --json latency.json [MODEL.WEIGHTS model.pth] [MODEL.SAM_MI.SAM.MODEL_TYPE vit_b ...]

It times the model's own forward (``model([{"image": ...}])``, whole-image or sliding window as the config
says): the stages are the named spans the model opens around them (sam_mi/utils/stage_timer.py: clip, tspp,
sam_encoder, sam_decoding, smagg, cost_head), "total" is the wall time of the call, and "other" what no span
covers (score upsampling). The points and masks per image come from the model's output. Ratios (same images,
same run): grid / learned total (paper Table 5: 5967 / 950 = 6.3x) and learned total / (CLIP + SAM encoders).

--random-weights reads no checkpoint: CLIP and SAM keep their real architectures, randomly initialised
(``MODEL.SAM_MI.SAM.RANDOM_INIT``, built by the same builder as the model's SAM), and --sam-image-size lets SAM
run at a reduced side (e.g. 512) on CPUs. An untrained TSPP head's point count is arbitrary, so without
MODEL.WEIGHTS its maps are rescaled to --expected-points (default 41, the paper's A-150 average in Table 6)
through ``MODEL.SAM_MI.TSPP.CALIBRATE_POINTS``. With random weights no mask passes SAM's filters, so NMS, SMAgg
and DMI would go untimed: --permissive-filters keeps every decoded mask (predicted-IoU and stability thresholds
off; NMS, SMAgg and DMI then run on realistic numbers of masks, reported beside the times).
--images reads the evaluation images of a registered dataset (e.g. ade20k_150_test_sem_seg, or the synthetic
validation set) instead of random ones, through the test mapper.
"""
import argparse
import json
import os
import sys
import time
from collections import defaultdict
from typing import Dict, List

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from tabulate import tabulate

from sam_mi import add_sam_mi_config
from sam_mi.data.vocabulary import resolve_vocabulary
from sam_mi.utils.stage_timer import StageTimer

STAGES = ["clip", "tspp", "sam_encoder", "sam_decoding", "smagg", "cost_head"]


def benchmark(model, images: List[torch.Tensor], mode: str, iters: int, warmup: int) -> Dict:
    """Mean ms per image for each stage, the total and the rest; mean points / SAM masks / masks per image."""
    model.prompter.sampling = mode
    inputs = [{"image": im, "height": im.shape[-2], "width": im.shape[-1]} for im in images]
    for x in inputs[:warmup]:
        model([x])
    timer, counts = StageTimer(model.device), defaultdict(list)
    total = 0.0
    with timer:
        for _ in range(iters):
            for x in inputs:
                timer.synchronize()
                start = time.perf_counter()
                out = model([x])[0]["sam_mi"]
                timer.synchronize()
                total += time.perf_counter() - start
                for k in ("num_points", "num_sam_masks", "num_masks"):
                    counts[k].append(out[k])
    n = iters * len(inputs)
    per_stage = timer.milliseconds(per=n)
    result = {f"{k}_ms": per_stage.get(k, 0.0) for k in STAGES}
    result["total_ms"] = 1000.0 * total / n
    result["other_ms"] = result["total_ms"] - sum(result[f"{k}_ms"] for k in STAGES)
    result.update({
        "points_per_image": sum(counts["num_points"]) / n,
        "sam_masks_per_image": sum(counts["num_sam_masks"]) / n,
        "masks_per_image": sum(counts["num_masks"]) / n,
    })
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--mode", default="all", choices=["learned", "grid", "random", "all"])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--num-images", type=int, default=2)
    parser.add_argument("--image-size", type=int, nargs=2, default=[512, 683], metavar=("H", "W"))
    parser.add_argument("--expected-points", type=float, default=41.0)
    parser.add_argument("--random-weights", action="store_true", help="build CLIP and SAM without checkpoints")
    parser.add_argument("--sam-image-size", type=int, default=None, help="SAM input side (--random-weights only)")
    parser.add_argument("--permissive-filters", action="store_true",
                        help="keep every decoded mask (random weights: makes NMS, SMAgg and DMI run)")
    parser.add_argument("--images", default=None, help="a registered dataset whose images are timed")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()

    cfg = get_cfg()
    add_sam_mi_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not cfg.MODEL.SAM_MI.SAM.ENABLED:
        sys.exit("benchmark_latency times SAM-MI's SAM stages: use a config with MODEL.SAM_MI.SAM.ENABLED True")
    if args.random_weights:
        cfg.MODEL.WEIGHTS = ""
        cfg.MODEL.SAM_MI.CLIP.PRETRAINED = ""
        cfg.MODEL.SAM_MI.SAM.RANDOM_INIT = True
        if args.sam_image_size:
            cfg.MODEL.SAM_MI.SAM.IMAGE_SIZE = args.sam_image_size
    elif args.sam_image_size:
        sys.exit("--sam-image-size needs --random-weights (official checkpoints run at 1024)")
    if args.permissive_filters:
        cfg.MODEL.SAM_MI.SAM.PRED_IOU_THRESH = -1e9
        cfg.MODEL.SAM_MI.SAM.STABILITY_SCORE_THRESH = 0.0
    calibrate = not cfg.MODEL.WEIGHTS
    if calibrate:
        cfg.MODEL.SAM_MI.TSPP.CALIBRATE_POINTS = args.expected_points
    cfg.freeze()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    if args.images:
        from sam_mi.engine import Trainer

        model.set_vocabulary(resolve_vocabulary(args.images))
        loader = Trainer.build_test_loader(cfg, args.images)
        images = [batch[0]["image"] for _, batch in zip(range(args.num_images), loader)]
    else:
        gen = torch.Generator().manual_seed(0)
        images = [torch.randint(0, 256, (3, *args.image_size), generator=gen, dtype=torch.uint8)
                  for _ in range(args.num_images)]

    modes = ["learned", "grid", "random"] if args.mode == "all" else [args.mode]
    if model.prompter.head is None:
        modes = [m for m in modes if m != "learned"]
    results = {m: benchmark(model, images, m, args.iters, args.warmup) for m in modes}
    columns = STAGES + ["other", "total"]
    rows = [[m] + [f"{r[f'{k}_ms']:.1f}" for k in columns] + [f"{r['points_per_image']:.1f}",
            f"{r['sam_masks_per_image']:.1f}", f"{r['masks_per_image']:.1f}"] for m, r in results.items()]
    print(tabulate(rows, headers=["mode"] + [f"{k} ms" for k in columns] + ["points", "SAM masks", "masks"],
                   tablefmt="github"))
    ratios = {}
    if "learned" in results and "grid" in results:
        ratios["grid_over_learned"] = results["grid"]["total_ms"] / results["learned"]["total_ms"]
    if "learned" in results:
        r = results["learned"]
        ratios["learned_over_encoders"] = r["total_ms"] / (r["clip_ms"] + r["sam_encoder_ms"])
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    report = {
        "device": str(model.device),
        "config": args.config_file,
        "opts": args.opts,
        "images": args.images or f"random {args.image_size[0]}x{args.image_size[1]}",
        "permissive_filters": bool(args.permissive_filters),
        "vocabulary_size": len(model.test_class_names),
        "sam": {"variant": cfg.MODEL.SAM_MI.SAM.VARIANT, "type": cfg.MODEL.SAM_MI.SAM.MODEL_TYPE,
                "image_size": cfg.MODEL.SAM_MI.SAM.IMAGE_SIZE, "random_weights": bool(args.random_weights)},
        "tspp_calibrated_to_points": args.expected_points if calibrate else None,
        "params_M": {  # Table 11's params column: the whole model and its frozen mask generator
            "total": sum(p.numel() for p in model.parameters()) / 1e6,
            "sam": sum(p.numel() for p in model.mask_generator.parameters()) / 1e6,
        },
        "results": results,
        "ratios": ratios,
        "torch_threads": torch.get_num_threads(),
    }
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
