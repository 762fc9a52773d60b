#!/usr/bin/env python
"""Parameter counts of the SAM types and timing of sparse-point decoding (random weights, no checkpoint).

    python tools/benchmark_sam_decoding.py --counts vit_b vit_l vit_h
    python tools/benchmark_sam_decoding.py --model-type vit_b --points 10 100 1024 --device cuda

Timing uses random weights: the cost of SAM's encoder/decoder does not depend on the weights, but the number
of masks surviving the filters does, so the post-filter part is only indicative. vit_h has 641M parameters.
"""

import argparse
import time

import torch

from sam_mi.modeling.sam import PointPromptedSAM, build_tiny_sam, sam_param_count


def _random_model(model_type: str) -> torch.nn.Module:
    if model_type == "tiny":
        return build_tiny_sam(128)
    from segment_anything import sam_model_registry

    return sam_model_registry[model_type](checkpoint=None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", nargs="*", default=[], help="model types to count parameters of")
    parser.add_argument("--model-type", default="", help="model type to time (vit_b, vit_l, vit_h, tiny)")
    parser.add_argument("--points", type=int, nargs="+", default=[10, 100, 1024])
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=683)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    for t in args.counts:
        c = sam_param_count(t)
        print(
            f"{t}: total {c['total'] / 1e6:.2f}M  image_encoder {c['image_encoder'] / 1e6:.2f}M  "
            f"prompt_encoder {c['prompt_encoder'] / 1e3:.1f}k  mask_decoder {c['mask_decoder'] / 1e6:.3f}M"
        )
    if not args.model_type:
        return
    device = torch.device(args.device)
    size = 128 if args.model_type == "tiny" else 1024
    # Permissive filters so that NMS and the final resize see realistic numbers of candidates.
    gen = PointPromptedSAM(_random_model(args.model_type), size, args.points_per_batch, 0.0, 0.0, 1.0, 0.7).to(device)
    image = torch.rand(1, 3, args.height, args.width, device=device) * 255
    out_size = (args.height // 4, args.width // 4)
    emb = gen.encode(image)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        emb = gen.encode(image)
    _sync(device)
    print(f"{args.model_type} encode: {(time.perf_counter() - t0) / args.repeats * 1e3:.1f} ms ({device})")
    for n in args.points:
        pts = torch.rand(n, 2, device=device)
        gen.generate(emb[0], pts, image.shape[-2:], out_size)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            masks, _ = gen.generate(emb[0], pts, image.shape[-2:], out_size)
        _sync(device)
        ms = (time.perf_counter() - t0) / args.repeats * 1e3
        print(f"  {n:5d} points: {ms:8.1f} ms, {masks.shape[0]} masks")


if __name__ == "__main__":
    main()
