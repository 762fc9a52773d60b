#!/usr/bin/env python
"""SAM's cost in SAM-MI, measured with random weights (no checkpoint): encoder fast path, decoding per point,
dense grid against segment-anything's SamAutomaticMaskGenerator, parameter counts.

    python tools/benchmark_sam_decoding.py counts vit_b vit_l vit_h
    python tools/benchmark_sam_decoding.py encoder --model-type vit_b --image-size 512
    python tools/benchmark_sam_decoding.py decoder --points 64 --embedding 64
    python tools/benchmark_sam_decoding.py grid --model-type vit_b --image-size 1024 --grid 16
    (every mode: --threads N --repeats R --device cpu|cuda --clock wall|process --json out.json)

encoder: segment-anything's attention vs the SDPA fast path vs SDPA + autocast, with the embedding's max abs
error and the IoU of the masks decoded from each embedding (same points). decoder: time per point of
`PointPromptedSAM.generate` split into prompt encoder / two-way transformer / output upscaling / IoU head /
filters / boxes / NMS / resampling, for the reference decoder and the fast one in every `masks_per_point` mode
(SAM's decoder is the same for every type: 256 wide, depth 2; `--embedding 64` is SAM at 1024; stage shares
come from a second, instrumented run); "fast/best 1 pass" is fast/best without the CPU sub-batches (every chunk of
--points-per-batch prompts in one pass). grid: the
dense-grid path (`--grid`² points, all 3 candidates, full-resolution masks) against SamAutomaticMaskGenerator
at equal settings, both including the image encoder. Filters are permissive so that masks flow with random
weights. Runs are interleaved and the minimum of `--repeats` is reported (shared machines are noisy).
"""

import argparse
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Dict, List

import torch

import sam_mi.modeling.sam.point_decoder as point_decoder
from sam_mi.modeling.sam import PointPromptedSAM, build_official_architecture, build_tiny_sam, sam_param_count
from sam_mi.modeling.sam.fast_attention import apply_sam_fast_path, remove_sam_fast_path
from sam_mi.modeling.sam.fast_decoder import FastPointDecoder
from sam_mi.utils.atomic_io import write_json_atomic

PERMISSIVE = dict(pred_iou_thresh=-1e9, stability_score_thresh=0.0, stability_score_offset=1.0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: wall time, or this process's CPU time (robust on a shared machine with --threads 1; CPU only)
CLOCK = {"clock": time.perf_counter}


def _min_times(fns: Dict[str, Callable], repeats: int, device: torch.device) -> Dict[str, float]:
    """Run every fn once (warm-up), then `repeats` interleaved rounds; min seconds per fn."""
    clock = CLOCK["clock"]
    for f in fns.values():
        f()
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            _sync(device)
            t = clock()
            f()
            _sync(device)
            best[k] = min(best[k], clock() - t)
    return best


def _model(model_type: str, image_size: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if model_type == "tiny":
        return build_tiny_sam(image_size)
    sam = build_official_architecture(model_type, image_size)
    with torch.no_grad():  # the official init leaves the rel-pos tables at 0: exercise the bias
        for name, p in sam.image_encoder.named_parameters():
            if "rel_pos" in name:
                p.normal_(0.0, 0.3)
    return sam


def _mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape or a.shape[0] == 0:
        return float("nan")
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float().clamp(min=1)
    return float((inter / union).mean())


# ---------------------------------------------------------------------------------------------- encoder
def bench_encoder(args, device) -> Dict:
    sam = _model(args.model_type, args.image_size).to(device).eval()
    gen = PointPromptedSAM(sam, args.image_size, masks_per_point="amg", box_nms_thresh=1.0, **PERMISSIVE).to(device)
    g = torch.Generator().manual_seed(1)
    image = (torch.rand(1, 3, args.image_size * 3 // 4, args.image_size, generator=g) * 255).to(device)
    points = torch.rand(32, 2, generator=g).to(device)

    def run(sdpa: bool, amp: bool) -> Callable:
        def f():
            apply_sam_fast_path(sam, sdpa=sdpa, check=False)
            gen.amp = amp
            return gen.encode(image)

        return f

    fns = {"original": run(False, False), "sdpa": run(True, False), "sdpa_amp": run(True, True)}
    times = _min_times(fns, args.repeats, device)
    embs = {k: f() for k, f in fns.items()}
    remove_sam_fast_path(sam)
    ref_masks = gen.generate(embs["original"][0], points, image.shape[-2:], image.shape[-2:])[0]
    out = {"model_type": args.model_type, "image_size": args.image_size, "device": str(device)}
    for k in fns:
        masks = gen.generate(embs[k][0], points, image.shape[-2:], image.shape[-2:])[0]
        out[k] = {
            "ms": times[k] * 1e3,
            "speedup": times["original"] / times[k],
            "max_abs_err": float((embs[k] - embs["original"]).abs().max()),
            "mask_iou": _mask_iou(masks, ref_masks),
        }
    out["embedding_abs_max"] = float(embs["original"].abs().max())
    print(f"{args.model_type} encoder at {args.image_size} ({device}, min of {args.repeats}):")
    for k in fns:
        r = out[k]
        print(f"  {k:9s} {r['ms']:9.1f} ms  x{r['speedup']:.2f}  max|err| {r['max_abs_err']:.2e}  "
              f"mask IoU {r['mask_iou']:.4f}")
    return out


# ---------------------------------------------------------------------------------------------- decoder
@contextmanager
def _stage_timers(gen: PointPromptedSAM, device: torch.device):
    """Seconds per stage of `generate`: module hooks (reference decoder), method wrappers (fast decoder) and
    wrappers of point_decoder's filter / box / NMS / resampling functions."""
    times: Dict[str, float] = defaultdict(float)
    handles, patched = [], []

    def timed(name: str, fn: Callable) -> Callable:
        def wrapper(*a, **k):
            _sync(device)
            t = CLOCK["clock"]()
            r = fn(*a, **k)
            _sync(device)
            times[name] += CLOCK["clock"]() - t
            return r

        return wrapper

    def hook(name: str, module: torch.nn.Module) -> None:
        start = {}

        def pre(*_):
            _sync(device)
            start["t"] = CLOCK["clock"]()

        def post(*_):
            _sync(device)
            times[name] += CLOCK["clock"]() - start["t"]

        handles.extend([module.register_forward_pre_hook(pre), module.register_forward_hook(post)])

    md = gen.sam.mask_decoder
    hook("prompt_encoder", gen.sam.prompt_encoder)
    hook("decoder_total", md)
    hook("transformer", md.transformer)
    hook("upscaling+hypernet", md.output_upscaling)
    for m in md.output_hypernetworks_mlps:
        hook("upscaling+hypernet", m)
    hook("iou_head", md.iou_prediction_head)
    for obj, name, label in [
        (FastPointDecoder, "prepare", "fast_prepare (per image)"),
        (FastPointDecoder, "forward", "decoder_total"),
        (FastPointDecoder, "_upscaled_masks", "upscaling+hypernet"),
        (point_decoder, "filter_candidates", "filters"),
        (point_decoder, "batched_mask_to_box", "boxes"),
        (point_decoder, "batched_nms", "nms"),
        (point_decoder, "logits_to_out_size", "resampling"),
    ]:
        fn = getattr(obj, name)
        patched.append((obj, name, fn))
        setattr(obj, name, timed(label, fn))
    try:
        yield times
    finally:
        for h in handles:
            h.remove()
        for obj, name, fn in patched:
            setattr(obj, name, fn)


def bench_decoder(args, device) -> Dict:
    e = args.embedding
    size = 16 * e
    torch.manual_seed(0)
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    sam = Sam(  # SAM's prompt encoder and decoder at their real size; the image encoder is not run
        image_encoder=torch.nn.Identity(),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(e, e), input_image_size=(size, size),
                                     mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
            depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8), transformer_dim=256, iou_head_depth=3,
            iou_head_hidden_dim=256),
    ).to(device)
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(256, e, e, generator=g).to(device)
    points = torch.rand(args.points, 2, generator=g).to(device)
    h, w = size * 3 // 4, size  # a 4:3 image: the bottom quarter of SAM's frame is padding
    out_size = (h // 4, w // 4)
    configs = {f"{'fast' if fast else 'reference'}/{mode}": (fast, mode)
               for fast in (False, True) for mode in ("amg", "best", "single")}
    gens = {k: PointPromptedSAM(sam, size, args.points_per_batch, box_nms_thresh=args.nms, masks_per_point=mode,
                                fast_decoder=fast, **PERMISSIVE) for k, (fast, mode) in configs.items()}
    # the fast decoder without its CPU sub-batches: the whole chunk in one pass (fast_decoder.py, item 5)
    gens["fast/best 1 pass"] = PointPromptedSAM(sam, size, args.points_per_batch, box_nms_thresh=args.nms,
                                                masks_per_point="best", **PERMISSIVE)
    gens["fast/best 1 pass"]._fast.cpu_batch_bytes = 0
    fns = {k: (lambda g_=g_: g_.generate(emb, points, (h, w), out_size)) for k, g_ in gens.items()}
    totals = _min_times(fns, args.repeats, device)
    out = {"points": args.points, "embedding": e, "device": str(device), "modes": {}}
    print(f"decoding {args.points} points on a {e}x{e} embedding ({device}, min of {args.repeats}), ms per point:")
    for k, f in fns.items():
        with _stage_timers(gens[k], device) as stages:  # a separate run: shares are of its own total
            _sync(device)
            t0 = CLOCK["clock"]()
            masks, _ = f()
            _sync(device)
            hooked = CLOCK["clock"]() - t0
        total = totals[k]
        stages = {s: v / hooked * total for s, v in stages.items()}
        if "decoder_total" in stages:  # the transformer is the rest of the fast decoder's forward
            stages.setdefault("transformer", stages["decoder_total"] - stages.get("upscaling+hypernet", 0.0))
        out["modes"][k] = {"ms_per_point": total / args.points * 1e3, "masks": int(masks.shape[0]),
                           "speedup_vs_reference_amg": totals["reference/amg"] / total,
                           "stages_ms": {s: v * 1e3 for s, v in stages.items()}}
        parts = "  ".join(f"{s} {v / total * 100:.0f}%" for s, v in sorted(stages.items(), key=lambda kv: -kv[1])
                          if s != "decoder_total")
        print(f"  {k:17s} {total / args.points * 1e3:8.2f} ms/pt  x{totals['reference/amg'] / total:5.2f}  "
              f"{masks.shape[0]:4d} masks  | {parts}")
    return out


# ---------------------------------------------------------------------------------------------- grid vs AMG
def bench_grid(args, device) -> Dict:
    import numpy as np
    from segment_anything import SamAutomaticMaskGenerator
    from segment_anything.utils.amg import build_point_grid

    sam = _model(args.model_type, args.image_size).to(device).eval()
    h, w = args.image_size * 3 // 4, args.image_size
    g = torch.Generator().manual_seed(1)
    image = torch.rand(3, h, w, generator=g) * 255
    image_np = image.permute(1, 2, 0).round().byte().numpy()
    image_t = torch.from_numpy(image_np).permute(2, 0, 1).float()[None].to(device)  # the same pixels
    points = torch.from_numpy(build_point_grid(args.grid)).float().to(device)  # AMG's grid: cell centres
    amg = SamAutomaticMaskGenerator(sam, points_per_side=args.grid, points_per_batch=args.points_per_batch,
                                    pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.7)
    ours_ref = PointPromptedSAM(sam, args.image_size, args.points_per_batch, box_nms_thresh=0.7,
                                masks_per_point="amg", fast_decoder=False, **PERMISSIVE).to(device)
    ours_fast = PointPromptedSAM(sam, args.image_size, args.points_per_batch, box_nms_thresh=0.7,
                                 masks_per_point="amg", **PERMISSIVE).to(device)
    counts = {}

    def ours(gen: PointPromptedSAM, sdpa: bool) -> Callable:
        def f():
            apply_sam_fast_path(sam, sdpa=sdpa, check=False)
            masks, _ = gen.generate(gen.encode(image_t)[0], points, (h, w), (h, w))
            counts[id(gen), sdpa] = int(masks.shape[0])

        return f

    def sam_amg():
        remove_sam_fast_path(sam)
        counts["amg"] = len(amg.generate(image_np))

    fns = {"SamAutomaticMaskGenerator": sam_amg, "ours (reference decoder, original attention)": ours(ours_ref, False),
           "ours (fast decoder, SDPA attention)": ours(ours_fast, True)}
    times = _min_times(fns, args.repeats, device)
    remove_sam_fast_path(sam)
    base = times["SamAutomaticMaskGenerator"]
    print(f"dense {args.grid}x{args.grid} grid, {args.model_type} at {args.image_size}, {h}x{w} image, "
          f"full-resolution masks, encoder included ({device}, min of {args.repeats}):")
    masks = [counts["amg"], counts[id(ours_ref), False], counts[id(ours_fast), True]]
    out = {"model_type": args.model_type, "image_size": args.image_size, "grid": args.grid, "device": str(device)}
    for (k, t), n in zip(times.items(), masks):
        out[k] = {"ms": t * 1e3, "speedup_vs_amg": base / t, "masks": n}
        print(f"  {k:45s} {t * 1e3:9.1f} ms  x{base / t:.2f}  {n} masks")
    return out


def main(argv: List[str] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["counts", "encoder", "decoder", "grid"])
    parser.add_argument("types", nargs="*", default=["vit_b"], help="counts: SAM types to count")
    parser.add_argument("--model-type", default="vit_b", help="vit_b, vit_l, vit_h or tiny (random weights)")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--embedding", type=int, default=64, help="decoder: embedding side (64 = SAM at 1024)")
    parser.add_argument("--points", type=int, default=64, help="decoder: points per image")
    parser.add_argument("--grid", type=int, default=16, help="grid: points per side")
    parser.add_argument("--nms", type=float, default=1.0,
                        help="decoder: box NMS threshold (1.0 keeps every mask: random weights give near-duplicates)")
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clock", choices=["wall", "process"], default="wall",
                        help="wall time, or this process's CPU time (robust on a shared CPU with --threads 1)")
    parser.add_argument("--json", default="", help="write the results here")
    args = parser.parse_args(argv)
    CLOCK["clock"] = time.process_time if args.clock == "process" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.mode == "counts":
        out = {}
        for t in args.types:
            c = out[t] = sam_param_count(t)
            print(f"{t}: total {c['total'] / 1e6:.2f}M  image_encoder {c['image_encoder'] / 1e6:.2f}M  "
                  f"prompt_encoder {c['prompt_encoder'] / 1e3:.1f}k  mask_decoder {c['mask_decoder'] / 1e6:.3f}M")
    else:
        with torch.no_grad():
            out = {"encoder": bench_encoder, "decoder": bench_decoder, "grid": bench_grid}[args.mode](args, device)
    out["threads"] = torch.get_num_threads()
    out["clock"] = args.clock
    if args.json:
        write_json_atomic(args.json, out)
    return out


if __name__ == "__main__":
    main()
