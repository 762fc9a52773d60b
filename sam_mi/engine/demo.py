"""The tiny end-to-end demo: SAM-MI's effect measured on the synthetic set (what ``make demo`` runs).

Steps (each skipped when its output exists, so a second run reuses them):
  0. the synthetic COCO-Stuff-layout dataset;
  1. the tiny SAM: random, or a checkpoint trained like SAM (tools/train_tiny_sam.py; the demo's
     --sam-checkpoint), loaded through MODEL.SAM_MI.SAM.CHECKPOINT exactly as SAM-H is;
  2. a warm-up of the random tiny CLIP (CAT-Seg's training, CLIP kept: the stand-in for a pre-trained CLIP),
     then from that CLIP the CAT-Seg baseline (SAM parts off) and SAM-MI (stage 1 TSPP, stage 2 with SAM's masks
     injected), same seed, data and stage-2 schedule, trained in two processes at once (they are independent);
  3. evaluation of the baseline, of SAM-MI trained without masks (TSPP's share of the gain), and of SAM-MI
     with TSPP, grid and random-64 prompts (Table 5 at tiny scale),
     with the oracle's masks at test time, and of SAM-MI trained and evaluated with the oracle's masks (the
     ceiling of mask injection): mIoU, boundary IoU, points / SAM masks / injected masks and ms per image;
  4. results.md, predictions.png and a predictor panel of one validation image.
"""
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluators, inference_on_dataset
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

from ..config import add_sam_mi_config
from ..data.image_io import read_image
from ..data.vocabulary import resolve_vocabulary
from ..evaluation import build_evaluator
from ..evaluation.boundary import BoundaryIoUEvaluator
from ..evaluation.sam_mi_stats import SAMMIStatsEvaluator
from ..utils.atomic_io import atomic_write
from ..utils.checkpoint_io import CheckedCheckpointer
from .trainer import Trainer

logger = logging.getLogger("sam_mi.demo")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_cfg(config: str, output_dir: str, opts: Sequence = ()) -> "CfgNode":  # noqa: F821
    """A frozen config from a file of this repository's configs/ and overrides."""
    cfg = get_cfg()
    add_sam_mi_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, config))
    cfg.merge_from_list(list(opts))
    cfg.OUTPUT_DIR = output_dir
    cfg.freeze()
    return cfg


def train(cfg) -> str:
    """Train ``cfg`` unless its model_final.pth exists; returns that file."""
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if os.path.isfile(final):
        logger.info("reusing %s", final)
        return final
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return final


def evaluate(cfg, weights: str) -> Dict[str, float]:
    """mIoU, boundary IoU, SAM-MI's counts and ms per image of ``weights`` on DATASETS.TEST[0]."""
    model = Trainer.build_model(cfg)
    CheckedCheckpointer(model).load(weights)
    return evaluate_model(cfg, model)


def evaluate_model(cfg, model: torch.nn.Module) -> Dict[str, float]:
    """`evaluate` of a built model (its settings are the model's; ``cfg`` gives the dataset and the loader)."""
    dataset = cfg.DATASETS.TEST[0]
    model.set_vocabulary(resolve_vocabulary(dataset, cfg.MODEL.SAM_MI.VOCABULARY_JSON))
    folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset)
    evaluator = DatasetEvaluators(
        [build_evaluator(cfg, dataset, folder), BoundaryIoUEvaluator(dataset), SAMMIStatsEvaluator()]
    )
    loader = Trainer.build_test_loader(cfg, dataset)
    start = time.perf_counter()
    results = inference_on_dataset(model, loader, evaluator)
    seconds = time.perf_counter() - start
    stats = results.get("sam_mi", {})
    return {
        "mIoU": results["sem_seg"]["mIoU"],
        "BIoU": results["boundary"]["BIoU"],
        "points": stats.get("points_per_image", 0.0),
        "sam_masks": stats.get("sam_masks_per_image", 0.0),
        "masks": stats.get("injected_masks_per_image", 0.0),
        "ms_per_image": 1000.0 * seconds / len(DatasetCatalog.get(dataset)),
    }


def effect_table(rows: Dict[str, Dict[str, float]]) -> str:
    """The demo's table (markdown): one row per evaluated setting."""
    head = ["setting", "mIoU", "boundary IoU", "points / img", "SAM masks / img", "injected / img", "ms / img"]
    body = [[name, f"{r['mIoU']:.1f}", f"{r['BIoU']:.1f}", f"{r['points']:.0f}", f"{r['sam_masks']:.1f}",
             f"{r['masks']:.1f}", f"{r['ms_per_image']:.0f}"] for name, r in rows.items()]
    return tabulate(body, headers=head, tablefmt="github")


def save_predictions_picture(models: Dict[str, torch.nn.Module], dataset: str, path: str, num_images: int = 4) -> None:
    """Image | ground truth | each model's prediction for the first validation images, coloured by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from ..data.image_io import read_label
    from ..utils.visualizer import palette

    meta = MetadataCatalog.get(dataset)
    colors = palette(len(meta.stuff_classes))
    records = DatasetCatalog.get(dataset)[:num_images]
    cols = 2 + len(models)
    fig, axes = plt.subplots(len(records), cols, figsize=(3 * cols, 3 * len(records)), squeeze=False)
    for row, rec in zip(axes, records):
        image = read_image(rec["file_name"], format="RGB")
        gt = read_label(rec["sem_seg_file_name"]).astype(np.int64)
        panels = [(image, "image"), (np.where((gt == meta.ignore_label)[..., None], 0, colors[gt.clip(0, len(colors) - 1)]),
                                     "ground truth")]
        x = {"image": torch.as_tensor(image.transpose(2, 0, 1).copy()), "height": image.shape[0],
             "width": image.shape[1], "file_name": rec["file_name"]}
        for name, model in models.items():
            pred = model([x])[0]["sem_seg"].argmax(0).cpu().numpy()
            panels.append((colors[pred], name))
        for ax, (img, title) in zip(row, panels):
            ax.imshow(img)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    handles = [Patch(color=c / 255.0, label=n) for n, c in zip(meta.stuff_classes, colors)]
    fig.legend(handles=handles, loc="lower center", ncol=min(7, len(handles)), fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def load_model(cfg, weights: str) -> torch.nn.Module:
    model = Trainer.build_model(cfg).eval()
    CheckedCheckpointer(model).load(weights)
    return model


def train_jobs(jobs: Sequence[Tuple[str, "CfgNode"]], log_file: str = "", threads: int = 0) -> List[str]:  # noqa: F821
    """Train each (title, config) in order, each from the same seed (model initialisation repeats: the
    baseline and SAM-MI start from the same CLIP); returns their model_final.pth files. ``log_file`` and
    ``threads`` set up a worker process (its own log file, torch threads)."""
    if threads:
        torch.set_num_threads(threads)
    if log_file:
        setup_logger(output=log_file, name="sam_mi")
        setup_logger(output=log_file, name="detectron2", abbrev_name="d2")
    weights = []
    for title, cfg in jobs:
        logger.info("=== %s, %d iterations", title, cfg.SOLVER.MAX_ITER)
        seed_all_rng(0)
        weights.append(train(cfg))
    return weights


def train_jobs_in_parallel(chains: Dict[str, Sequence[Tuple[str, "CfgNode"]]], out: str,  # noqa: F821
                           workers: int = 2) -> Dict[str, List[str]]:
    """`train_jobs` for each independent chain (the baseline; SAM-MI's stage 1 then stage 2), in ``workers``
    processes of one thread each: the tiny models are too small for a second thread to pay, so on a 2-core
    machine two processes halve the demo's training time. ``workers`` 1 trains in this process, in order."""
    if workers <= 1:
        return {name: train_jobs(jobs) for name, jobs in chains.items()}
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's thread pools
    with ProcessPoolExecutor(min(workers, len(chains)), mp_context=context) as pool:
        futures = {name: pool.submit(train_jobs, jobs, os.path.join(out, f"log_{name}.txt"), 1)
                   for name, jobs in chains.items()}
        return {name: future.result() for name, future in futures.items()}


def keep_clip_weights(checkpoint: str, path: str) -> str:
    """Write the ``clip.*`` weights of a detectron2 checkpoint to ``path`` (atomically, once) and return it."""
    if not os.path.isfile(path):
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
        with atomic_write(path, "wb") as f:
            torch.save({"model": {k: v for k, v in state.items() if k.startswith("clip.")}}, f)
    return path


def run_demo(out: str, num_train: int, num_val: int, sam_checkpoint: str, iters: Optional[Dict[str, int]] = None,
             panel_image: Optional[str] = None, workers: int = 2) -> Dict[str, Dict[str, float]]:
    """Steps 2-4 of the module docstring (data and tiny SAM prepared by the caller); returns the table's rows.
    ``workers``: processes for the two independent trainings (`train_jobs_in_parallel`)."""
    iters = iters or {}
    sam = ["MODEL.SAM_MI.SAM.CHECKPOINT", sam_checkpoint]
    # The paper's models all start from a pre-trained CLIP (and a random aggregator); a random tiny CLIP's 7
    # text embeddings have cosine 0.93-0.98 with each other, so TSPP's stage 1 (CLIP frozen) would see
    # class-blind cost maps and learn nothing (L_tspp stays at ln 7). The tiny stand-in for CLIP's
    # pre-training: ``warmup`` iterations of CAT-Seg's training, of which only CLIP is kept; the baseline and
    # SAM-MI both start from that CLIP, their aggregators (and TSPP, DMI) from random weights, as in the paper.
    # (Keeping the warm aggregator too favours the baseline: SAM-MI's random DMI first disturbs it.)
    warmup = iters.get("warmup", 300)
    init: List = []
    if warmup > 0:
        warm = load_cfg("configs/tiny/sam_mi_tiny_baseline.yaml", os.path.join(out, "clip_warmup"),
                        ["SOLVER.MAX_ITER", warmup])
        warm_weights = train_jobs([("warm-up of the tiny CLIP (CAT-Seg's training; CLIP kept)", warm)])[0]
        init = ["MODEL.WEIGHTS", keep_clip_weights(warm_weights, os.path.join(out, "clip_warmup", "clip.pth"))]
    stage1 = load_cfg("configs/tiny/sam_mi_tiny_stage1.yaml", os.path.join(out, "stage1"),
                      ["SOLVER.MAX_ITER", iters.get("stage1", 500)] + init)
    stage2_opts = ["SOLVER.MAX_ITER", iters.get("stage2", 500)]
    baseline = load_cfg("configs/tiny/sam_mi_tiny_baseline.yaml", os.path.join(out, "baseline"), stage2_opts + init)
    stage1_weights = os.path.join(stage1.OUTPUT_DIR, "model_final.pth")
    stage2 = load_cfg("configs/tiny/sam_mi_tiny_stage2.yaml", os.path.join(out, "stage2"),
                      stage2_opts + sam + ["MODEL.WEIGHTS", stage1_weights])
    # The ceiling of mask injection: SAM-MI trained (stage 2 from the warm-up, no stage 1: the oracle needs no
    # prompts) and evaluated with the ground truth's regions as its masks, injected as they are (SMAgg off:
    # the regions are class-pure already, and merging them by a tiny TSPP's M^text mixes classes). It shares
    # the baseline's process, which is the shorter chain.
    oracle = load_cfg("configs/tiny/sam_mi_tiny_stage2.yaml", os.path.join(out, "stage2_oracle"),
                      stage2_opts + ["MODEL.WEIGHTS", init[1] if init else "", "MODEL.SAM_MI.SAM.ORACLE_MASKS", True,
                                     "MODEL.SAM_MI.SMAGG.ENABLED", False])
    # What SAM-MI gains without any mask (SAM's filters keep none, so DMI never runs: stage 1 and L_tspp alone),
    # to split the margin over the baseline into TSPP's share and the masks' share.
    no_masks = load_cfg("configs/tiny/sam_mi_tiny_stage2.yaml", os.path.join(out, "stage2_no_masks"),
                        stage2_opts + ["MODEL.WEIGHTS", stage1_weights, "MODEL.SAM_MI.SAM.PRED_IOU_THRESH", 1e9])
    jobs = {"baseline": [("CAT-Seg baseline (SAM parts off)", baseline),
                         ("SAM-MI stage 2 trained with the oracle's masks (the ceiling)", oracle)],
            "sam_mi": [("SAM-MI stage 1: TSPP alone", stage1),
                       (f"SAM-MI stage 2: the tiny SAM's masks injected ({sam_checkpoint or 'random weights'})",
                        stage2),
                       ("SAM-MI stage 2 without masks (TSPP's share of the gain)", no_masks)]}
    trained = train_jobs_in_parallel(jobs, out, workers)
    (baseline_weights, oracle_weights), (_, stage2_weights, no_masks_weights) = trained["baseline"], trained["sam_mi"]

    settings = {
        "CAT-Seg baseline": (baseline, baseline_weights, []),
        "SAM-MI trained without masks": (no_masks, no_masks_weights, []),
        "SAM-MI, TSPP": (stage2, stage2_weights, []),
        "SAM-MI, grid": (stage2, stage2_weights, ["MODEL.SAM_MI.TSPP.SAMPLING", "grid"]),
        "SAM-MI, random-64": (stage2, stage2_weights, ["MODEL.SAM_MI.TSPP.SAMPLING", "random"]),
        "SAM-MI, oracle masks": (stage2, stage2_weights, ["MODEL.SAM_MI.SAM.ORACLE_MASKS", True]),
        "SAM-MI trained with oracle masks": (oracle, oracle_weights, []),
    }
    rows = {}
    for name, (cfg, weights, opts) in settings.items():
        sub = cfg.clone()
        sub.defrost()
        sub.merge_from_list(opts)
        sub.OUTPUT_DIR = os.path.join(out, "eval", name.replace(", ", "_").replace(" ", "_"))
        sub.freeze()
        logger.info("=== evaluating %s", name)
        rows[name] = evaluate(sub, weights)

    dataset = stage2.DATASETS.TEST[0]
    models = {"CAT-Seg": load_model(baseline, baseline_weights), "SAM-MI": load_model(stage2, stage2_weights)}
    save_predictions_picture(models, dataset, os.path.join(out, "predictions.png"))
    draw_demo_panel(stage2, stage2_weights, panel_image or DatasetCatalog.get(dataset)[0]["file_name"],
                    resolve_vocabulary(dataset), os.path.join(out, "panel.png"))
    return rows


def draw_demo_panel(cfg, weights: str, image_path: str, vocabulary: List[str], path: str) -> None:
    """The predictor's paper-style panel (tools/predict.py) of one image with the trained SAM-MI."""
    from ..utils.visualizer import draw_panel
    from .predictor import SAMMIPredictor, image_to_tensor

    sub = cfg.clone()
    sub.defrost()
    sub.MODEL.WEIGHTS = weights
    sub.freeze()
    predictor = SAMMIPredictor(sub)
    image = image_to_tensor(image_path)
    draw_panel(image.permute(1, 2, 0).numpy(), predictor(image, vocabulary), path,
               title=os.path.basename(image_path))
