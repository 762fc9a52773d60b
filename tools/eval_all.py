#!/usr/bin/env python
r"""Evaluate a model on a suite of benchmarks and report against the paper (Tables 1 and 2).

    # the five standard benchmarks + PAS-20b (paper Table 2), protocol flags applied for you
    python tools/eval_all.py --config-file configs/coco-stuff-171/sam_mi_vitb16_384_stage2.yaml \
        --weights output/sam_mi_vitb16/model_final.pth --suite ovss --output output/eval_vitb16
    # the 22 MESS datasets (paper Table 1), 4 GPUs
    python tools/eval_all.py --config-file ... --weights ... --suite mess --num-gpus 4
    # any list of registered names (or suites)
    python tools/eval_all.py --config-file ... --weights ... \
        --suite ade20k_150_test_sem_seg,kvasir_instrument_sem_seg_test

Per dataset the metrics, the points / SAM masks / injected masks per image (paper Table 6) and what
produced them (weights file hash, config, protocol flags, vocabulary, number of images) land in
``<output>/<dataset>/results.json`` as soon as it finishes.  Running again re-evaluates what had not
finished, and whatever was produced differently (other weights in the same folder, another config or
vocabulary; the log says which field differed) or whose file is damaged.  Datasets that are not prepared
are skipped with the command that prepares them.  The final report is ``<output>/results.csv``,
``results.json`` and ``report.md``.  Extra ``KEY VALUE`` pairs at the end override the config (after the
protocol flags); ``MODEL.SAM_MI.VOCABULARY_JSON`` replaces the prompts of every dataset of the suite (a
dataset whose label ids it does not fit fails with a message).
"""
import logging
import os
import sys

from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger


def get_parser():
    parser = default_argument_parser(epilog=__doc__)
    parser.add_argument("--suite", default="ovss", help="'ovss', 'mess', or comma-separated dataset names / suites")
    parser.add_argument("--weights", default="", help="checkpoint to evaluate (same as MODEL.WEIGHTS)")
    parser.add_argument("--output", default="", help="output folder (default: <OUTPUT_DIR>/eval_<suite>)")
    parser.add_argument("--dataset-root", default="", help="dataset root (default: $DETECTRON2_DATASETS or datasets)")
    parser.add_argument("--no-protocol", action="store_true",
                        help="do not apply the evaluation protocol (sliding window, pooling [1,1])")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def clip_architecture(model_name: str) -> str:
    """The paper's name for the CLIP of ``MODEL.SAM_MI.CLIP.MODEL_NAME`` (its Table 2 rows)."""
    return "ViT-L/14" if "L-14" in model_name or "L/14" in model_name else "ViT-B/16"


def setup(args, dataset_names):
    """The frozen config (protocol flags, weights, overrides, output folder) and the protocol flags applied."""
    from sam_mi import add_sam_mi_config
    from sam_mi.evaluation import apply_protocol

    cfg = get_cfg()
    add_sam_mi_config(cfg)
    cfg.merge_from_file(args.config_file)
    protocol = [] if args.no_protocol else apply_protocol(cfg)
    if args.weights:
        cfg.MODEL.WEIGHTS = args.weights
    cfg.merge_from_list(args.opts)
    suite_tag = args.suite if "," not in args.suite else "custom"
    cfg.OUTPUT_DIR = args.output or os.path.join(cfg.OUTPUT_DIR, f"eval_{suite_tag}")
    # the model takes its initial vocabulary from DATASETS.TEST[0]; the suite sets it per dataset anyway
    if dataset_names:
        cfg.DATASETS.TEST = tuple(dataset_names)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="sam_mi")
    logging.getLogger("sam_mi").info(f"protocol flags: {protocol or 'not applied (--no-protocol)'}")
    return cfg, protocol


def _broadcast_from_main(model) -> None:
    """Give every process the main process's parameters and buffers.

    detectron2 seeds each rank differently (SEED + rank), so anything not loaded from the checkpoint (all of
    it when no weights are given, e.g. the tiny model) would differ between processes and the gathered
    confusion matrices would mix several models.
    """
    if comm.get_world_size() == 1:
        return
    import torch.distributed as dist

    for tensor in list(model.state_dict().values()):
        dist.broadcast(tensor, src=0)


def main(args):
    if args.dataset_root:
        os.environ["DETECTRON2_DATASETS"] = args.dataset_root
    import sam_mi  # noqa: F401  (registers the standard benchmarks and SAMMI)
    from detectron2.data import DatasetCatalog
    from sam_mi.evaluation import resolve_suite, run_suite, write_report
    from sam_mi.utils.checkpoint_io import CheckedCheckpointer

    names = resolve_suite(args.suite)
    cfg, protocol = setup(args, [n for n in names if n in DatasetCatalog.list()])
    log = logging.getLogger("sam_mi")
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        CheckedCheckpointer(model, save_dir=cfg.OUTPUT_DIR, config_key="--weights / MODEL.WEIGHTS").load(
            cfg.MODEL.WEIGHTS)
    else:
        log.warning("no weights given (--weights / MODEL.WEIGHTS): evaluating the initialisation")
    _broadcast_from_main(model)
    model.eval()
    outcome = run_suite(cfg, model, names, cfg.OUTPUT_DIR, progress=not args.no_progress, protocol=protocol)
    if comm.is_main_process():
        results = {n: outcome.results[n] for n in names if n in outcome.results}
        paths = write_report(cfg.OUTPUT_DIR, results, outcome.skipped, outcome.failed,
                             architecture=clip_architecture(cfg.MODEL.SAM_MI.CLIP.MODEL_NAME),
                             stats={n: outcome.stats.get(n, {}) for n in results})
        for name, reason in outcome.skipped.items():
            print(f"[skip] {name}: {reason}", flush=True)
        for name, reason in outcome.failed.items():
            print(f"[fail] {name}: {reason}", flush=True)
        print(f"evaluated now: {', '.join(outcome.evaluated) or 'none'}", flush=True)
        print("report: " + ", ".join(paths), flush=True)
    return outcome


def cli(argv=None) -> int:
    """Run the suite; exit status 1 when a dataset failed (skipped ones are not failures)."""
    args = get_parser().parse_args(argv)
    if args.num_gpus * args.num_machines == 1:
        return 1 if main(args).failed else 0  # what launch() does for one process, keeping the outcome
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
