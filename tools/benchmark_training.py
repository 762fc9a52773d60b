#!/usr/bin/env python
"""Training efficiency (paper Table 10): ms per iteration, peak memory, trainable and total parameters of the
CAT-Seg baseline and of SAM-MI at the same batch, with the SAM fast path on and off.

    python tools/benchmark_training.py --iters 5 --random-weights                        # tiny configs
    python tools/benchmark_training.py --baseline-config configs/coco-stuff-171/catseg_vitb16_384.yaml \
        --config-file configs/coco-stuff-171/sam_mi_vitb16_384_stage2.yaml --random-weights --batch 4 \
        --crop 384 MODEL.SAM_MI.SAM.MODEL_TYPE vit_h

Each setting trains the model's own forward / backward / optimizer step (sam_mi.engine.build_optimizer) on
random images and labels of the training crop size, TSPP's untrained maps rescaled to --expected-points points
per image (default 41, the paper's A-150 average, Table 6); the first --warmup iterations are not timed. Peak
memory is CUDA's max_memory_allocated on a GPU; on a CPU it is the weights, buffers and optimizer state plus the
peak of the tensors allocated during two more iterations, traced with torch.profiler's allocation events
(sam_mi/utils/memory_trace.py; exact for PyTorch's allocator with --threads 1), so that each setting has its
own number in one process. --settings runs a subset (baseline, fast, off), e.g. one per process when a full-size
run on a CPU is long; overhead_vs_baseline is then None without the baseline. The paper: 471 -> 746 ms per
iteration (+58 %), 25 -> 28 M trainable, 154 -> 798 M total.
"""
import argparse
import gc
import time
from typing import Dict, List

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from tabulate import tabulate

from sam_mi import add_sam_mi_config
from sam_mi.engine import build_optimizer
from sam_mi.utils.atomic_io import write_json_atomic
from sam_mi.utils.memory_trace import TensorMemoryTrace

BASELINE = "w/o SAM (CAT-Seg)"


def load(config: str, opts: List[str], random_weights: bool, device: str, expected_points: float):
    cfg = get_cfg()
    add_sam_mi_config(cfg)
    cfg.merge_from_file(config)
    cfg.merge_from_list(opts)
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = ""
    # an untrained TSPP head's point count is arbitrary (~0.7 per grid cell): rescale its maps as the latency
    # benchmark does, so that SAM decodes a realistic number of points per image
    cfg.MODEL.SAM_MI.TSPP.CALIBRATE_POINTS = float(expected_points)
    if random_weights:
        cfg.MODEL.SAM_MI.CLIP.PRETRAINED = ""
        cfg.MODEL.SAM_MI.SAM.RANDOM_INIT = True
    cfg.freeze()
    return cfg


def static_mb(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> float:
    """Weights, buffers and optimizer state (what lives between iterations), in MiB."""
    tensors = list(model.parameters()) + list(model.buffers())
    tensors += [t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values()) / 2**20


def measure(cfg, batch: int, crop: int, iters: int, warmup: int) -> Dict[str, float]:
    torch.manual_seed(0)
    model = build_model(cfg).train()
    device = model.device
    optimizer = build_optimizer(cfg, model)
    num_classes = len(model.train_class_names)
    g = torch.Generator().manual_seed(0)
    batches = [[{"image": torch.randint(0, 256, (3, crop, crop), dtype=torch.uint8, generator=g),
                 "sem_seg": torch.randint(0, num_classes, (crop, crop), generator=g)} for _ in range(batch)]
               for _ in range(2)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step(batch) -> None:
        losses = model(batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    times = []
    for it in range(warmup + iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step(batches[it % 2])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if it >= warmup:
            times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:  # two more iterations, traced (not timed: the profiler slows them down). Gradients are dropped
        # first, so that every tensor besides the static ones is allocated under the trace and its free is seen:
        # the second iteration's forward then runs beside the first one's gradients, as in detectron2's loop.
        optimizer.zero_grad(set_to_none=True)
        gc.collect()
        with TensorMemoryTrace(device) as trace:
            step(batches[0])
            step(batches[1])
        peak = static_mb(model, optimizer) + trace.peak_bytes / 2**20
    params = list(model.named_parameters())
    frozen_sam = sum(p.numel() for n, p in params if n.startswith("mask_generator."))
    return {
        "ms_per_iter": 1000.0 * sum(times) / len(times),
        "peak_memory_mb": peak,
        "trainable_M": sum(p.numel() for _, p in params if p.requires_grad) / 1e6,
        "total_M": sum(p.numel() for _, p in params) / 1e6,
        "frozen_sam_M": frozen_sam / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="configs/tiny/sam_mi_tiny_stage2.yaml")
    parser.add_argument("--baseline-config", default="configs/tiny/sam_mi_tiny_baseline.yaml")
    parser.add_argument("--batch", type=int, default=4, help="images per iteration (the paper: 4 on 4 GPUs)")
    parser.add_argument("--crop", type=int, default=128, help="training crop side (the paper: 384)")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--random-weights", action="store_true", help="no checkpoint: random CLIP and SAM")
    parser.add_argument("--expected-points", type=float, default=41.0,
                        help="TSPP's maps rescaled to this many points per image (no weights are loaded)")
    parser.add_argument("--settings", nargs="+", choices=["baseline", "fast", "off"],
                        default=["baseline", "fast", "off"],
                        help="which settings to run (e.g. one per process when a full-size run is long)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--json", default=None)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of the SAM-MI config")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    settings = {}
    if "baseline" in args.settings:
        settings[BASELINE] = load(args.baseline_config, [], args.random_weights, device, args.expected_points)
    for key, name, fast in (("fast", "w/ SAM, fast path", True), ("off", "w/ SAM, fast path off", False)):
        if key in args.settings:
            opts = list(args.opts) + ["MODEL.SAM_MI.SAM.SDPA", fast, "MODEL.SAM_MI.SAM.AMP", fast]
            settings[name] = load(args.config_file, opts, args.random_weights, device, args.expected_points)
    results = {}
    for name, cfg in settings.items():
        results[name] = measure(cfg, args.batch, args.crop, args.iters, args.warmup)
        for r in results.values():  # None when the baseline is not in this run
            r["overhead_vs_baseline"] = r["ms_per_iter"] / results[BASELINE]["ms_per_iter"] - 1.0 \
                if BASELINE in results else None
        if args.json:  # after every setting: an interrupted run keeps what it measured
            write_json_atomic(args.json, {"device": device, "batch": args.batch, "crop": args.crop,
                                          "iters": args.iters, "torch_threads": torch.get_num_threads(),
                                          "results": results})
    rows = [[n, f"{r['ms_per_iter']:.0f}", "-" if r["overhead_vs_baseline"] is None else
             f"{100 * r['overhead_vs_baseline']:+.0f} %", f"{r['peak_memory_mb']:.0f}",
             f"{r['trainable_M']:.2f}", f"{r['total_M']:.2f}"] for n, r in results.items()]
    print(tabulate(rows, headers=["setting", "ms / iter", "vs baseline", "peak MB", "trainable (M)", "total (M)"],
                   tablefmt="github"))


if __name__ == "__main__":
    main()
