#!/usr/bin/env python
"""Time of CAT-Seg's cost aggregator per class, split into its stages, against an earlier implementation.

    python tools/benchmark_aggregator.py --threads 2 --json aggregator.json
    python tools/benchmark_aggregator.py --baseline-rev HEAD~3 --classes 20 171 --pooling 1 2

Builds `Aggregator` at CAT-Seg's ViT-B size (24x24 CLIP grid, hidden 128, 512-d text, window 12, pad_len 256)
with random weights, and times a forward (no grad, evaluation) for each vocabulary size T and class-aggregation
pooling: total, ms per class, and the shares of the spatial Swin blocks, the class attention and the upsampling
decoder (module hooks, on a second run). With `--baseline-rev REV` the aggregator and its layers are also
loaded from that git revision (read with `git show`, imported as a separate package), given the same weights
and inputs, timed interleaved with the current code (so machine load hits both alike; the minimum of
`--repeats` runs is kept), and the outputs are compared (max abs difference). On a shared machine,
`--threads 1 --clock process` measures this process's CPU time instead of wall time, which other processes
hardly disturb (with several threads, CPU time would also count the threads' spin-waiting).
"""

import argparse
import importlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from typing import Dict, List, Optional

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_FILES = ["aggregator.py", "layers/__init__.py", "layers/class_attention.py", "layers/swin_blocks.py",
          "layers/upsample_decoder.py"]


def load_baseline(rev: str, folder: str):
    """The `Aggregator` class of git revision `rev`, imported as package `sam_mi_aggregator_baseline`."""
    name = "sam_mi_aggregator_baseline"
    root = os.path.join(folder, name)
    os.makedirs(os.path.join(root, "layers"), exist_ok=True)
    open(os.path.join(root, "__init__.py"), "w").close()
    for f in _FILES:
        text = subprocess.run(["git", "show", f"{rev}:sam_mi/modeling/{f}"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout
        with open(os.path.join(root, f), "w") as out:
            out.write(text)
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, "__init__.py"),
                                                  submodule_search_locations=[root])
    sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules[name])
    return importlib.import_module(f"{name}.aggregator").Aggregator


def _stage_shares(model: torch.nn.Module, run) -> Dict[str, float]:
    """Fractions of one run spent in the Swin blocks, class attention and decoder (forward hooks)."""
    times: Dict[str, float] = defaultdict(float)
    handles = []

    def hook(name, module):
        start = {}
        handles.append(module.register_forward_pre_hook(lambda *a: start.__setitem__("t", time.perf_counter())))
        handles.append(module.register_forward_hook(
            lambda *a: times.__setitem__(name, times[name] + time.perf_counter() - start["t"])))

    for layer in model.layers:
        hook("swin", layer.swin_block)
        hook("class_attention", layer.attention)
    for name in ("decoder1", "decoder2", "head"):
        hook("decoder", getattr(model, name))
    t = time.perf_counter()
    run()
    total = time.perf_counter() - t
    for h in handles:
        h.remove()
    shares = {k: v / total for k, v in times.items()}
    shares["other"] = 1.0 - sum(shares.values())
    return shares


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def bench(T: int, pool: int, repeats: int, baseline_cls: Optional[type], seed: int = 0, clock=time.perf_counter) -> Dict:
    from sam_mi.modeling.aggregator import Aggregator

    torch.manual_seed(seed)
    model = Aggregator().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # non-trivial everywhere (padding tokens start at zero)
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 / max(1, p[0].numel() if p.dim() > 1 else 1) ** 0.5))
    model.set_pooling_size((pool, pool))
    img, text = torch.randn(1, 512, 24, 24, generator=g), torch.randn(1, T, 1, 512, generator=g)
    dec = [torch.randn(1, 256, 48, 48, generator=g), torch.randn(1, 128, 96, 96, generator=g)]
    models = {"current": model}
    if baseline_cls is not None:
        base = baseline_cls().eval()
        base.load_state_dict(model.state_dict())
        base.set_pooling_size((pool, pool))
        models["baseline"] = base
    runs = {k: (lambda m=m: m(img, text, img, dec)) for k, m in models.items()}
    with torch.no_grad():
        outs = {k: r() for k, r in runs.items()}  # warm-up
        best = {k: float("inf") for k in runs}
        for _ in range(repeats):
            for k, r in runs.items():
                t = clock()
                r()
                best[k] = min(best[k], clock() - t)
        shares = {k: _stage_shares(models[k], r) for k, r in runs.items()}
    row = {"classes": T, "pooling": pool}
    for k in runs:
        row[k] = {"ms": best[k] * 1e3, "ms_per_class": best[k] * 1e3 / T, "shares": shares[k]}
    if "baseline" in runs:
        row["speedup"] = best["baseline"] / best["current"]
        row["max_abs_diff"] = float((outs["current"] - outs["baseline"]).abs().max())
        row["output_abs_max"] = float(outs["baseline"].abs().max())
    return row


def main(argv: List[str] = None) -> List[Dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, nargs="+", default=[20, 171])
    parser.add_argument("--pooling", type=int, nargs="+", default=[1, 2], help="class-aggregation pooling sides")
    parser.add_argument("--baseline-rev", default="", help="git revision of the implementation to compare with")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or this process's CPU time (robust on a shared machine with --threads 1)")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        baseline = load_baseline(args.baseline_rev, tmp) if args.baseline_rev else None
        print(f"CAT-Seg aggregator (ViT-B size, 24x24, hidden 128), forward without grad, {torch.get_num_threads()} "
              f"threads, {args.clock} time, min of {args.repeats}" + (f", baseline {args.baseline_rev}" if baseline else ""))
        head = f"{'T':>4} {'pool':>4} | {'ms':>9} {'ms/class':>9} {'swin':>5} {'class':>5} {'dec':>5}"
        if baseline:
            head += f" | {'base ms':>9} {'ms/class':>9} {'swin':>5} {'class':>5} {'dec':>5} | {'speedup':>7} {'max|diff|':>9}"
        print(head)
        for T in args.classes:
            for pool in args.pooling:
                r = bench(T, pool, args.repeats, baseline, clock=CLOCKS[args.clock])
                rows.append(r)

                def cols(d):
                    s = d["shares"]
                    return (f"{d['ms']:9.1f} {d['ms_per_class']:9.2f} {s.get('swin', 0):5.0%} "
                            f"{s.get('class_attention', 0):5.0%} {s.get('decoder', 0):5.0%}")

                line = f"{T:4d} {pool:4d} | {cols(r['current'])}"
                if baseline:
                    line += f" | {cols(r['baseline'])} | {r['speedup']:7.2f} {r['max_abs_diff']:9.2e}"
                print(line)
    if args.json:
        from sam_mi.utils.atomic_io import write_json_atomic

        write_json_atomic(args.json, {"threads": torch.get_num_threads(), "clock": args.clock,
                                      "baseline_rev": args.baseline_rev, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
