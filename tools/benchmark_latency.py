#!/usr/bin/env python
"""Per-stage inference latency of SAM-MI, for the three point-sampling modes of Table 5.

    python tools/benchmark_latency.py --config-file configs/coco-stuff-171/sam_mi_vitb16_384_stage2.yaml \
        --mode all --iters 3 --json latency.json [MODEL.WEIGHTS model.pth] [MODEL.SAM_MI.SAM.MODEL_TYPE vit_b ...]

Stages timed (whole-image inference, one image at a time, as the paper's latency): CLIP image encoder, TSPP
(cost maps + head), SAM image encoder, SAM prompt decoding + filters + NMS, SMAgg, DMI + aggregator, and the
total. The points and masks per image are reported too. Ratios printed at the end (same images, same run):
grid / learned total latency (paper: 5967 / 950 = 6.3x) and learned total / (CLIP + SAM image encoders).

With --random-weights no checkpoint is read: CLIP and SAM get their real architectures (the config's CLIP,
SAM's MODEL_TYPE) randomly initialised, which times the same computation. --sam-image-size then lets SAM run
at a reduced resolution (e.g. 512) to keep CPU runs affordable; with real weights SAM runs at 1024. An untrained TSPP head's point count is arbitrary, so in that case its probability
map is rescaled to sum to --expected-points (default 41, the paper's A-150 average in Table 6); with
MODEL.WEIGHTS the learned map is used as it is.
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
from sam_mi.modeling.sam.point_decoder import PointPromptedSAM
from sam_mi.modeling.dmi import pad_masks
from sam_mi.modeling.mask_injection import select_points, text_masks_from_logits
from sam_mi.modeling.smagg import shallow_mask_aggregation

STAGES = ["clip", "tspp", "sam_encoder", "sam_decoding", "smagg", "dmi_aggregator", "total"]


class Timer:
    """Accumulates wall time per stage, synchronising CUDA so GPU work is counted where it happens."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: Dict[str, float] = defaultdict(float)

    def __call__(self, name: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                timer.sync()
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timer.sync()
                timer.times[name] += time.perf_counter() - self.start

        return _Ctx()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


@torch.inference_mode()
def run_once(model, image: torch.Tensor, mode: str, names: List[str], expected_points: float, calibrate: bool,
             timer: Timer, generator: torch.Generator) -> Dict[str, int]:
    """One whole-image forward of SAMMI.predict, split into timed stages (same functions, same order)."""
    images = image[None]
    start = time.perf_counter()
    timer.sync()
    with timer("clip"):
        dense, guidance = model.clip.encode_image_dense(images)
        text = model.clip.encode_text(names)  # cached after the first call, as at test time
    with timer("tspp"):
        cost = model.cost_maps(dense, text)
        prob, class_logits = model.tspp(cost) if model.tspp is not None else (None, cost)
        if prob is not None and calibrate:
            prob = prob * (expected_points / prob.sum().clamp_min(1e-6))
    h, w = dense.shape[-2:]
    out_size = (4 * h, 4 * w)
    with timer("sam_encoder"):
        embeddings = model.sam.encode(images)
    with timer("sam_decoding"):
        points = select_points(mode, None if prob is None else prob[0], model.grid_size,
                               model.num_random_points, generator).to(images.device)
        masks, _ = model.sam.generate(embeddings[0], points, tuple(images.shape[-2:]), out_size)
    num_sam = masks.shape[0]
    with timer("smagg"):
        if model.smagg and num_sam:
            masks = shallow_mask_aggregation(masks, text_masks_from_logits(class_logits[0], out_size),
                                             model.alpha_sma)
        padded = pad_masks([masks])
    with timer("dmi_aggregator"):
        model.aggregate(dense, guidance, text, padded)
    timer.sync()
    timer.times["total"] += time.perf_counter() - start
    return {"points": int(points.shape[0]), "sam_masks": int(num_sam), "masks": int(masks.shape[0])}


# segment-anything's ViT hyper-parameters (build_sam.py): embed dim, depth, heads, global-attention blocks
SAM_ARCHS = {
    "vit_b": (768, 12, 12, [2, 5, 8, 11]),
    "vit_l": (1024, 24, 16, [5, 11, 17, 23]),
    "vit_h": (1280, 32, 16, [7, 15, 23, 31]),
}


def random_sam(model_type: str, image_size: int, s) -> PointPromptedSAM:
    """SAM of ``model_type`` at ``image_size``, randomly initialised, from segment-anything's classes (its own
    builder fixes the size to 1024), wrapped with the config's filters ``s`` (MODEL.SAM_MI.SAM)."""
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    dim, depth, heads, global_attn = SAM_ARCHS[model_type]
    grid = image_size // 16
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=depth, embed_dim=dim, img_size=image_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=heads, patch_size=16, qkv_bias=True,
            use_rel_pos=True, global_attn_indexes=global_attn, window_size=14, out_chans=256,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=256, image_embedding_size=(grid, grid), input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return PointPromptedSAM(
        sam, image_size, points_per_batch=s.POINTS_PER_BATCH, pred_iou_thresh=s.PRED_IOU_THRESH,
        stability_score_thresh=s.STABILITY_SCORE_THRESH, stability_score_offset=s.STABILITY_SCORE_OFFSET,
        box_nms_thresh=s.BOX_NMS_THRESH,
    )


def benchmark(model, images: List[torch.Tensor], mode: str, iters: int, warmup: int, expected_points: float,
              calibrate: bool) -> Dict:
    names = model.test_class_names
    device = model.device
    gen = torch.Generator(device=device).manual_seed(0)
    for image in images[:warmup]:
        run_once(model, image, mode, names, expected_points, calibrate, Timer(device), gen)
    timer, counts = Timer(device), defaultdict(list)
    for _ in range(iters):
        for image in images:
            for k, v in run_once(model, image, mode, names, expected_points, calibrate, timer, gen).items():
                counts[k].append(v)
    n = iters * len(images)
    result = {f"{k}_ms": 1000.0 * timer.times[k] / n for k in STAGES}
    result.update({f"{k}_per_image": sum(v) / len(v) for k, v in counts.items()})
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
    parser.add_argument("--sam-image-size", type=int, default=1024, help="SAM input size (--random-weights only)")
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
    sam_type = cfg.MODEL.SAM_MI.SAM.MODEL_TYPE
    if args.random_weights:
        if cfg.MODEL.SAM_MI.SAM.VARIANT != "sam":
            sys.exit("--random-weights builds segment-anything's SAM; use MODEL.SAM_MI.SAM.VARIANT sam")
        cfg.MODEL.WEIGHTS = ""
        cfg.MODEL.SAM_MI.CLIP.PRETRAINED = ""
        if sam_type != "tiny":  # placeholder, replaced below by the real architecture at --sam-image-size
            cfg.MODEL.SAM_MI.SAM.MODEL_TYPE, cfg.MODEL.SAM_MI.SAM.IMAGE_SIZE = "tiny", 128
    cfg.freeze()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if args.random_weights and sam_type != "tiny":
        model.sam = random_sam(sam_type, args.sam_image_size, cfg.MODEL.SAM_MI.SAM).to(model.device)
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    calibrate = not cfg.MODEL.WEIGHTS
    gen = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, *args.image_size), generator=gen).float().to(model.device)
              for _ in range(args.num_images)]

    modes = ["learned", "grid", "random"] if args.mode == "all" else [args.mode]
    if model.tspp is None:
        modes = [m for m in modes if m != "learned"]
    results = {m: benchmark(model, images, m, args.iters, args.warmup, args.expected_points, calibrate)
               for m in modes}
    rows = [[m] + [f"{r[f'{k}_ms']:.1f}" for k in STAGES] + [f"{r['points_per_image']:.1f}",
            f"{r['sam_masks_per_image']:.1f}", f"{r['masks_per_image']:.1f}"] for m, r in results.items()]
    print(tabulate(rows, headers=["mode"] + [f"{k} ms" for k in STAGES] + ["points", "SAM masks", "masks"],
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
        "image_size": args.image_size,
        "sam": {"type": sam_type, "image_size": model.sam.image_size if hasattr(model.sam, "image_size") else None,
                "random_weights": bool(args.random_weights)},
        "tspp_calibrated_to_points": args.expected_points if calibrate else None,
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
