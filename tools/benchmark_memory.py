#!/usr/bin/env python
"""Peak memory of evaluating one image against the vocabulary size and the class chunk (aggregator and TSPP).

    python tools/benchmark_memory.py --config-file configs/coco-stuff-171/sam_mi_vitb16_384_stage2.yaml \
        --random-weights --sam-image-size 512 --threads 1 --json memory.json MODEL.SAM_MI.SAM.MODEL_TYPE vit_b
    # chunk-size sweep on the A-847 vocabulary
    python tools/benchmark_memory.py ... --vocabularies ade20k_full_sem_seg_freq_val_all --chunks 0 4 16 64

Each (vocabulary, chunk) pair is measured in its own process (sam_mi/engine/memory_benchmark.py): the
vocabulary's text embeddings, then one evaluation of a random --image-size image with the evaluation protocol
(sliding window, pooling 1x1; --whole-image for CAT-Seg's whole-image path). Vocabularies: registered datasets
(default A-150 = ade20k_150_test_sem_seg and A-847 = ade20k_full_sem_seg_freq_val_all), JSON lists of names, or
integers N (synthetic names). Chunks: ``MODEL.SAM_MI.AGGREGATOR.CLASS_CHUNK`` and ``MODEL.SAM_MI.TSPP.CLASS_CHUNK``
together (0 = all classes at once; default the config's aggregator chunk; a TSPP chunk in the opts wins). Memory is live tensor bytes above the weights: on a CPU from torch.profiler's allocation events
(sam_mi/utils/memory_trace.py: exact for PyTorch's allocator, run with --threads 1), on CUDA from
max_memory_allocated; the process's peak resident size (weights, libraries, allocator caches included) is
reported beside. --random-weights builds CLIP and SAM without checkpoints (sam_mi/engine/benchmarking.py),
with SAM's filters permissive so that SMAgg and DMI get masks. --json is rewritten (atomically) after every
configuration.
"""
import argparse
import sys

from tabulate import tabulate

from sam_mi.engine.memory_benchmark import run_isolated
from sam_mi.utils.atomic_io import write_json_atomic

COLUMNS = [("text_encoding", "text enc"), ("tspp", "tspp"), ("cost_volume", "cost volume"),
           ("aggregation", "aggregation"), ("decoder", "decoder"), ("cost_head", "cost head"),
           ("score_maps", "score maps")]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--vocabularies", nargs="+",
                        default=["ade20k_150_test_sem_seg", "ade20k_full_sem_seg_freq_val_all"])
    parser.add_argument("--chunks", type=int, nargs="+", default=None, help="CLASS_CHUNK values (0 = no chunks)")
    parser.add_argument("--image-size", type=int, nargs=2, default=[512, 683], metavar=("H", "W"))
    parser.add_argument("--whole-image", action="store_true", help="whole-image inference instead of the protocol")
    parser.add_argument("--random-weights", action="store_true", help="build CLIP and SAM without checkpoints")
    parser.add_argument("--sam-image-size", type=int, default=None, help="SAM input side (--random-weights only)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: every allocation traced)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per configuration")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    if args.sam_image_size and not args.random_weights:
        sys.exit("--sam-image-size needs --random-weights (official checkpoints run at 1024)")
    if args.chunks is not None and min(args.chunks) < 0:
        sys.exit(f"--chunks must be >= 0 (0 = all classes at once), got {args.chunks}")

    chunks = args.chunks if args.chunks is not None else [_config_chunk(args.config_file, args.opts)]
    report = {"config": args.config_file, "opts": list(args.opts), "method": None, "runs": []}
    runs = report["runs"]
    for vocabulary in args.vocabularies:
        for chunk in chunks:
            print(f"vocabulary {vocabulary}, class chunk {chunk} ...", flush=True)
            runs.append(run_isolated(
                timeout=args.timeout, config_file=args.config_file, vocabulary=vocabulary, class_chunk=chunk,
                opts=list(args.opts), image_size=list(args.image_size), sliding_window=not args.whole_image,
                random_weights=args.random_weights, sam_image_size=args.sam_image_size, device=args.device,
                threads=args.threads))
            report["method"] = runs[0]["method"]
            if args.json:  # after every configuration: an interrupted sweep keeps what it measured
                write_json_atomic(args.json, report)
    rows = [[r["vocabulary"], r["num_classes"], r["aggregated_classes"], r["class_chunk"]]
            + [f"{r['spans'].get(k, {}).get('rise_mb', 0.0):.1f}" for k, _ in COLUMNS]
            + [f"{r['peak_mb']:.1f}", f"{r['tensors_mb']['score_maps']:.1f}", f"{r['max_rss_mb']:.0f}"]
            for r in runs]
    print(f"MiB of live tensors above the weights ({runs[0]['device']}); per stage: its rise over the level at which "
          "it began")
    print(tabulate(rows, headers=["vocabulary", "T", "aggregated", "chunk"] + [c for _, c in COLUMNS]
                   + ["peak", "score maps [T,H,W]", "max RSS"], tablefmt="github"))
    return report


def _config_chunk(config_file: str, opts) -> int:
    from sam_mi.engine.benchmarking import benchmark_cfg

    return int(benchmark_cfg(config_file, opts, device="cpu").MODEL.SAM_MI.AGGREGATOR.CLASS_CHUNK)


if __name__ == "__main__":
    main()
