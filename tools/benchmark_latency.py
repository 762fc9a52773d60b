#!/usr/bin/env python
"""Per-stage inference latency of SAM-MI for the three point-sampling modes of Table 5.

    python tools/benchmark_latency.py --config-file configs/coco-stuff-171/sam_mi_vitb16_384_stage2.yaml \
        --mode all --iters 3 --json latency.json [MODEL.WEIGHTS model.pth] [MODEL.SAM_MI.SAM.MODEL_TYPE vit_b ...]

It times the model's own forward (``model([{"image": ...}])``, whole-image or sliding window as the config
says): the stages are the named spans the model opens around them (sam_mi/utils/stage_timer.py: clip, tspp,
sam_encoder, sam_decoding, smagg, cost_head), "total" is the wall time of the call, and "other" what none of
them covers (mostly the "score_maps" span: sigmoid, merge and resize of the scores). The points and masks per
image come from the model's output. Ratios (same images, same run): grid / learned total (paper Table 5:
5967 / 950 = 6.3x) and learned total / (CLIP + SAM encoders).

--random-weights reads no checkpoint: CLIP and SAM keep their real architectures, randomly initialised
(``MODEL.SAM_MI.SAM.RANDOM_INIT``, built by the same builder as the model's SAM), and --sam-image-size lets SAM
run at a reduced side (e.g. 512) on CPUs. An untrained TSPP head's point count is arbitrary, so without
MODEL.WEIGHTS its maps are rescaled to --expected-points (default 41, the paper's A-150 average in Table 6)
through ``MODEL.SAM_MI.TSPP.CALIBRATE_POINTS``. With random weights no mask passes SAM's filters, so NMS, SMAgg
and DMI would go untimed: --permissive-filters turns the predicted-IoU and stability thresholds off (the masks per
image are reported beside the times). NMS stays, and a random SAM's masks are near-duplicates, so it keeps about
one per image (measured: 1 of 54 on VOC-20, ViT-B at 512); add MODEL.SAM_MI.SAM.BOX_NMS_THRESH 1.0 to pass every
decoded mask to SMAgg and DMI, an upper bound on their cost (54 masks: SMAgg 2.9 ms, the cost head unchanged
within noise).
--images reads the evaluation images of a registered dataset (e.g. ade20k_150_test_sem_seg, or the synthetic
validation set) instead of random ones, through the test mapper. --vocabulary prompts the model with a registered
dataset's class names (voc_2012_test_sem_seg: 20, coco_2017_test_stuff_all_sem_seg: 171, ade20k_150_test_sem_seg:
150, ade20k_full_sem_seg_freq_val_all: 847) or a JSON list of names; default: --images' dataset, else the config's
DATASETS.TEST.

--baseline-config times a SAM-less config (the CAT-Seg baseline, e.g. configs/coco-stuff-171/catseg_vitb16_384.yaml)
on the same images with the same overrides and vocabulary, as the row "baseline", and adds the ratio
learned_over_baseline (SAM-MI's total over CAT-Seg's; pass the protocol's MODEL.SAM_MI.INFERENCE.SLIDING_WINDOW
True MODEL.SAM_MI.AGGREGATOR.POOLING_SIZES [1,1] for sliding-window evaluation).

--embedding-cache DIR times a second evaluation of the same images with SAM's image-embedding cache
(``MODEL.SAM_MI.SAM.EMBEDDING_CACHE``, sam_mi/modeling/sam/embedding_cache.py) instead of the sampling modes:
one mode (--mode, "learned" for "all"), each image once per pass; pass 1 misses and fills the cache, pass 2 reads
it and skips the encoder. Its "sam_encoder" span then is the cache look-up. The JSON's "embedding_cache" holds
both passes' times with the cache hits, misses and SAM image-encoder calls of each. The warm-up runs on one
extra image, so that it does not fill the cache for the timed ones; give a new folder (entries left by an
earlier run make pass 1 hit too, which the counts show).
"""
import argparse
import os
import sys
import time
from collections import defaultdict
from typing import Dict, List

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from tabulate import tabulate

from sam_mi.data.vocabulary import resolve_vocabulary
from sam_mi.engine.benchmarking import benchmark_cfg, vocabulary_from_spec
from sam_mi.utils.atomic_io import write_json_atomic
from sam_mi.utils.stage_timer import StageTimer

STAGES = ["clip", "tspp", "sam_encoder", "sam_decoding", "smagg", "cost_head"]


def benchmark(model, images: List[torch.Tensor], mode: str, iters: int, warmup: int) -> Dict:
    """Mean ms per image for each stage, the total and the rest; mean points / SAM masks / masks per image.
    ``mode`` is the prompter's sampling; a model without prompter (the CAT-Seg baseline) ignores it."""
    if model.prompter is not None:
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


def cached_passes(model, images: List[torch.Tensor], mode: str, warmup_images: List[torch.Tensor]) -> Dict:
    """Two passes over ``images`` with the model's SAM embedding cache: times and cache counts of each."""
    cache = model.mask_generator.embedding_cache
    encoder = getattr(getattr(model.mask_generator, "sam", None), "image_encoder", None)
    calls = []
    if encoder is not None:  # counts SAM image-encoder forwards (segment-anything's variants)
        encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    benchmark(model, warmup_images, mode, 1, 0)  # warm-up on other images: the timed ones stay uncached
    report = {}
    for name in ("first", "second"):
        hits, misses, n_calls = cache.hits, cache.misses, len(calls)
        result = benchmark(model, images, mode, 1, 0)
        result.update(cache_hits=cache.hits - hits, cache_misses=cache.misses - misses,
                      encoder_images=sum(calls[n_calls:]) if encoder is not None else None)
        report[name] = result
    report["second_over_first_total"] = report["second"]["total_ms"] / report["first"]["total_ms"]
    report["encoder_ms_saved"] = report["first"]["sam_encoder_ms"] - report["second"]["sam_encoder_ms"]
    return report


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
    parser.add_argument("--vocabulary", default=None,
                        help="class names: a registered dataset's, a JSON list, or N synthetic ones")
    parser.add_argument("--embedding-cache", default=None, metavar="DIR",
                        help="time two passes with SAM's embedding cache in DIR (a new folder) instead of the modes")
    parser.add_argument("--baseline-config", default=None,
                        help="also time this SAM-less config (CAT-Seg) on the same images, same overrides")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    opts = list(args.opts)
    if args.embedding_cache:
        opts += ["MODEL.SAM_MI.SAM.EMBEDDING_CACHE", args.embedding_cache]
    try:
        cfg = benchmark_cfg(args.config_file, opts, args.device, args.random_weights, args.sam_image_size,
                            args.permissive_filters, args.expected_points)
    except ValueError as e:
        sys.exit(str(e))
    if not cfg.MODEL.SAM_MI.SAM.ENABLED:
        sys.exit("benchmark_latency times SAM-MI's SAM stages: use a config with MODEL.SAM_MI.SAM.ENABLED True")
    calibrate = not cfg.MODEL.WEIGHTS
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    extra = 1 if args.embedding_cache else 0  # the cache's warm-up image, never timed
    if args.images:
        from sam_mi.engine import Trainer

        model.set_vocabulary(resolve_vocabulary(args.images))
        loader = Trainer.build_test_loader(cfg, args.images)
        images = [batch[0]["image"] for _, batch in zip(range(args.num_images + extra), loader)]
        if len(images) < args.num_images + extra:
            sys.exit(f"--images {args.images}: {len(images)} images, {args.num_images + extra} needed")
    else:
        gen = torch.Generator().manual_seed(0)
        images = [torch.randint(0, 256, (3, *args.image_size), generator=gen, dtype=torch.uint8)
                  for _ in range(args.num_images + extra)]
    if args.vocabulary:
        model.set_vocabulary(vocabulary_from_spec(args.vocabulary))
    if args.embedding_cache:
        mode = "learned" if args.mode == "all" else args.mode
        if mode == "learned" and model.prompter.head is None:
            sys.exit("--embedding-cache: the config has no TSPP head; pick --mode grid or random")
        passes = cached_passes(model, images[:-1], mode, images[-1:])
        columns = STAGES + ["other", "total"]
        rows = [[name] + [f"{r[f'{k}_ms']:.1f}" for k in columns] + [r["cache_hits"], r["cache_misses"],
                r["encoder_images"]] for name, r in ((k, passes[k]) for k in ("first", "second"))]
        print(tabulate(rows, headers=["pass"] + [f"{k} ms" for k in columns] + ["hits", "misses", "encoded"],
                       tablefmt="github"))
        print(f"second / first total: {passes['second_over_first_total']:.2f}x, "
              f"SAM encoder ms saved per image: {passes['encoder_ms_saved']:.1f}")
        if args.json:
            write_json_atomic(args.json, {
                "device": str(model.device), "config": args.config_file, "opts": args.opts, "mode": mode,
                "images": args.images or f"random {args.image_size[0]}x{args.image_size[1]}",
                "num_images": len(images) - 1, "vocabulary_size": len(model.test_class_names),
                "embedding_cache": passes, "torch_threads": torch.get_num_threads(),
            })
        return

    modes = ["learned", "grid", "random"] if args.mode == "all" else [args.mode]
    if model.prompter.head is None:
        modes = [m for m in modes if m != "learned"]
    results = {m: benchmark(model, images, m, args.iters, args.warmup) for m in modes}
    vocabulary = list(model.test_class_names)
    params = {  # Table 11's params column: the whole model and its frozen mask generator
        "total": sum(p.numel() for p in model.parameters()) / 1e6,
        "sam": sum(p.numel() for p in model.mask_generator.parameters()) / 1e6,
    }
    device = str(model.device)
    if args.baseline_config:
        del model  # one model in memory at a time
        base_cfg = benchmark_cfg(args.baseline_config, args.opts, args.device, args.random_weights, None)
        torch.manual_seed(0)
        baseline = build_model(base_cfg).eval()
        if base_cfg.MODEL.WEIGHTS:
            DetectionCheckpointer(baseline).load(base_cfg.MODEL.WEIGHTS)
        baseline.set_vocabulary(vocabulary)
        results["baseline"] = benchmark(baseline, images, "baseline", args.iters, args.warmup)
        params["baseline_total"] = sum(p.numel() for p in baseline.parameters()) / 1e6
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
        if "baseline" in results:
            ratios["learned_over_baseline"] = r["total_ms"] / results["baseline"]["total_ms"]
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    report = {
        "device": device,
        "config": args.config_file,
        "baseline_config": args.baseline_config,
        "opts": args.opts,
        "images": args.images or f"random {args.image_size[0]}x{args.image_size[1]}",
        "permissive_filters": bool(args.permissive_filters),
        "vocabulary_size": len(vocabulary),
        "sam": {"variant": cfg.MODEL.SAM_MI.SAM.VARIANT, "type": cfg.MODEL.SAM_MI.SAM.MODEL_TYPE,
                "image_size": cfg.MODEL.SAM_MI.SAM.IMAGE_SIZE, "random_weights": bool(args.random_weights)},
        "tspp_calibrated_to_points": args.expected_points if calibrate else None,
        "params_M": params,
        "results": results,
        "ratios": ratios,
        "torch_threads": torch.get_num_threads(),
    }
    if args.json:
        write_json_atomic(args.json, report)


if __name__ == "__main__":
    main()
