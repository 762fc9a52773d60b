"""The tiny end-to-end demo: SAM-MI's effect measured on the synthetic set (what ``make demo`` runs).

Steps (each skipped when its output exists, so a second run reuses them):
  0. the synthetic COCO-Stuff-layout dataset;
  1. the tiny SAM (segment-anything's classes) trained with SAM's recipe on the training set
     (sam_pretraining.py; its quality, with x and y of the prompts swapped as a control, goes to the table's
     caption) and loaded through MODEL.SAM_MI.SAM.CHECKPOINT exactly as SAM-H is; or a given checkpoint, or
     the random tiny SAM;
  2. a warm-up of the random tiny CLIP (CAT-Seg's training, CLIP kept: the stand-in for a pre-trained CLIP),
     then from that CLIP the CAT-Seg baseline (SAM parts off) and SAM-MI (stage 1 TSPP, stage 2 with SAM's masks
     injected), same seed, data and stage-2 schedule. Steps 1-2 are a job graph run by two one-thread
     processes (job_graph.py): the SAM trains beside the warm-up;
  3. evaluation of the baseline, of SAM-MI trained without masks (TSPP's share of the gain), and of SAM-MI
     with TSPP, grid and random-64 prompts (Table 5 at tiny scale),
     with the oracle's masks at test time, and of SAM-MI trained and evaluated with the oracle's masks (the
     ceiling of mask injection) and with those masks mirrored (its control: does their placement matter?):
     mIoU, boundary IoU, points / SAM masks / injected masks and ms per image (several ``seeds``: each row's
     mean, spread and paired difference to the baseline, `seed_summary_table`);
  4. results.md, predictions.png and a predictor panel of one validation image.
"""
import logging
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluators, inference_on_dataset
from detectron2.utils.env import seed_all_rng
from tabulate import tabulate

from ..config import add_sam_mi_config
from ..data.image_io import read_image
from ..data.vocabulary import resolve_vocabulary
from ..evaluation import build_evaluator
from ..evaluation.boundary import BoundaryIoUEvaluator
from ..evaluation.sam_mi_stats import SAMMIStatsEvaluator
from ..utils.atomic_io import atomic_write
from ..utils.checkpoint_io import CheckedCheckpointer
from .job_graph import Job, run_job_graph
from .trainer import Trainer

logger = logging.getLogger("sam_mi.demo")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: regions under 100 px (~40% of one 16-px patch of the tiny SAM) are mostly out of its reach
#: (sam_pretraining.py); the demo's SAM trains on the others
DEMO_SAM_MIN_REGION_AREA = 100


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


def seed_summary_table(per_seed: Dict[int, Dict[str, Dict[str, float]]]) -> str:
    """Each row's mIoU and boundary IoU over seeds (mean ± sample standard deviation), and its paired difference
    to the baseline of the same seed: the trainings of one seed share their CLIP warm-up, so the difference
    varies less than either score."""
    def spread(values: List[float]) -> str:
        values = np.asarray(values, dtype=np.float64)
        std = values.std(ddof=1) if len(values) > 1 else 0.0
        return f"{values.mean():.1f} ± {std:.1f}"

    seeds = list(per_seed)
    names = list(per_seed[seeds[0]])
    base = "CAT-Seg baseline"
    body = []
    for name in names:
        row = [name]
        for key in ("mIoU", "BIoU"):
            row.append(spread([per_seed[s][name][key] for s in seeds]))
            row.append(spread([per_seed[s][name][key] - per_seed[s][base][key] for s in seeds]))
        body.append(row)
    head = ["setting", "mIoU", "mIoU - baseline", "boundary IoU", "boundary IoU - baseline"]
    return tabulate(body, headers=head, tablefmt="github")


def sam_caption(report: Optional[Dict], checkpoint: str = "") -> str:
    """One sentence on the demo's SAM: the tiny SAM's quality report (`train_demo_sam`), else what was used."""
    if report is None:
        return f"SAM: {checkpoint}." if checkpoint else "SAM: the random tiny SAM (its masks ignore the prompt)."
    quality, swapped = report["quality"]["best_iou"], report["swapped_quality"]["best_iou"]
    unfiltered = min(report["amg"], key=lambda row: (row["pred_iou_thresh"], row["stability_score_thresh"]))
    schedule, seconds = report["settings"]["schedule"], report["training"]["seconds"]
    return (f"SAM: the tiny SAM trained with SAM's recipe ({schedule['iters']} iterations, {seconds:.0f} s"
            f"{', reused' if report.get('reused') else ''}). One point inside each validation region: best-of-3 "
            f"mask IoU {quality:.2f} ({swapped:.2f} with the prompt's x and y swapped); "
            f"{unfiltered['masks_per_image']:.0f} masks per image pass NMS with the quality filters off.")


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


def train_job(title: str, cfg) -> str:
    """One training of the demo (a job of `run_job_graph`), every one from the same seed, ``cfg.SEED`` (model
    initialisation repeats: the baseline and SAM-MI start from the same CLIP); returns its model_final.pth."""
    logger.info("=== %s, %d iterations, seed %d", title, cfg.SOLVER.MAX_ITER, cfg.SEED)
    seed_all_rng(max(0, cfg.SEED))  # python, numpy, torch: initialisation and the data order
    return train(cfg)


def warm_up_clip(cfg, clip_path: str) -> str:
    """The CLIP warm-up (CAT-Seg's training of ``cfg``), of which only CLIP is kept, at ``clip_path``."""
    weights = train_job("warm-up of the tiny CLIP (CAT-Seg's training; CLIP kept)", cfg)
    return keep_clip_weights(weights, clip_path)


def train_demo_sam(train_split: str, val_split: str, output: str, iters: int, seed: int = 0) -> Dict:
    """The demo's tiny SAM, trained with SAM's recipe (sam_pretraining.py) or reused; returns its report."""
    from .sam_pretraining import TinySAMSchedule
    from .tiny_sam_run import train_or_reuse_tiny_sam

    logger.info("=== the tiny SAM, trained with SAM's recipe, %d iterations", iters)
    schedule = TinySAMSchedule(iters=iters, min_region_area=DEMO_SAM_MIN_REGION_AREA, seed=seed)
    return train_or_reuse_tiny_sam(train_split, val_split, output, schedule, reuse=True, log=logger.info)


def keep_clip_weights(checkpoint: str, path: str) -> str:
    """Write the ``clip.*`` weights of a detectron2 checkpoint to ``path`` (atomically, once) and return it."""
    if not os.path.isfile(path):
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
        with atomic_write(path, "wb") as f:
            torch.save({"model": {k: v for k, v in state.items() if k.startswith("clip.")}}, f)
    return path


#: The table's rows: setting -> (the trained model, config overrides at test time).
DEMO_ROWS: Dict[str, Tuple[str, List]] = {
    "CAT-Seg baseline": ("baseline", []),
    "SAM-MI trained without masks": ("no_masks", []),
    "SAM-MI, TSPP": ("stage2", []),
    "SAM-MI, grid": ("stage2", ["MODEL.SAM_MI.TSPP.SAMPLING", "grid"]),
    "SAM-MI, random-64": ("stage2", ["MODEL.SAM_MI.TSPP.SAMPLING", "random"]),
    "SAM-MI, oracle masks": ("stage2", ["MODEL.SAM_MI.SAM.ORACLE_MASKS", True]),
    "SAM-MI trained with oracle masks": ("oracle", []),
    # its control: the same model with the oracle's masks mirrored (right shapes, wrong places)
    "SAM-MI trained with oracle masks, mirrored at test": ("oracle", ["MODEL.SAM_MI.SAM.ORACLE_MIRRORED", True]),
}


def demo_configs(out: str, sam_checkpoint: str, iters: Optional[Dict[str, int]] = None, seed: int = 0) -> Dict:
    """The demo's training configs under ``out``: {"warmup" (if any), "stage1", "baseline", "stage2", "oracle",
    "no_masks"}, every one with SEED ``seed``; each model is ``<cfg.OUTPUT_DIR>/model_final.pth``."""
    iters = iters or {}
    seeded = ["SEED", seed]
    # The paper's models all start from a pre-trained CLIP (and a random aggregator); a random tiny CLIP's 7
    # text embeddings have cosine 0.93-0.98 with each other, so TSPP's stage 1 (CLIP frozen) would see
    # class-blind cost maps and learn nothing (L_tspp stays at ln 7). The tiny stand-in for CLIP's
    # pre-training: ``warmup`` iterations of CAT-Seg's training, of which only CLIP is kept; the baseline and
    # SAM-MI both start from that CLIP, their aggregators (and TSPP, DMI) from random weights, as in the paper.
    # (Keeping the warm aggregator too favours the baseline: SAM-MI's random DMI first disturbs it.)
    cfgs, init = {}, []
    if iters.get("warmup", 300) > 0:
        cfgs["warmup"] = load_cfg("configs/tiny/sam_mi_tiny_baseline.yaml", os.path.join(out, "clip_warmup"),
                                  seeded + ["SOLVER.MAX_ITER", iters.get("warmup", 300)])
        init = ["MODEL.WEIGHTS", os.path.join(out, "clip_warmup", "clip.pth")]
    cfgs["stage1"] = load_cfg("configs/tiny/sam_mi_tiny_stage1.yaml", os.path.join(out, "stage1"),
                              seeded + ["SOLVER.MAX_ITER", iters.get("stage1", 500)] + init)
    stage2_opts = seeded + ["SOLVER.MAX_ITER", iters.get("stage2", 500)]
    cfgs["baseline"] = load_cfg("configs/tiny/sam_mi_tiny_baseline.yaml", os.path.join(out, "baseline"),
                                stage2_opts + init)
    stage1_weights = os.path.join(cfgs["stage1"].OUTPUT_DIR, "model_final.pth")
    cfgs["stage2"] = load_cfg("configs/tiny/sam_mi_tiny_stage2.yaml", os.path.join(out, "stage2"),
                              stage2_opts + ["MODEL.SAM_MI.SAM.CHECKPOINT", sam_checkpoint,
                                             "MODEL.WEIGHTS", stage1_weights])
    # The ceiling of mask injection: SAM-MI trained (stage 2 from the warm-up, no stage 1: the oracle needs no
    # prompts) and evaluated with the ground truth's regions as its masks, injected as they are (SMAgg off:
    # the regions are class-pure already, and merging them by a tiny TSPP's M^text mixes classes).
    cfgs["oracle"] = load_cfg("configs/tiny/sam_mi_tiny_stage2.yaml", os.path.join(out, "stage2_oracle"),
                              stage2_opts + ["MODEL.WEIGHTS", init[1] if init else "",
                                             "MODEL.SAM_MI.SAM.ORACLE_MASKS", True, "MODEL.SAM_MI.SMAGG.ENABLED", False])
    # What SAM-MI gains without any mask (SAM's filters keep none, so DMI never runs: stage 1 and L_tspp alone),
    # to split the margin over the baseline into TSPP's share and the masks' share.
    cfgs["no_masks"] = load_cfg("configs/tiny/sam_mi_tiny_stage2.yaml", os.path.join(out, "stage2_no_masks"),
                                stage2_opts + ["MODEL.WEIGHTS", stage1_weights,
                                               "MODEL.SAM_MI.SAM.PRED_IOU_THRESH", 1e9])
    return cfgs


def evaluate_demo_rows(cfgs: Dict, out: str) -> Dict[str, Dict[str, float]]:
    """`evaluate` of every row of `DEMO_ROWS` (trained models of `demo_configs`), outputs under ``out``/eval."""
    rows = {}
    for name, (key, opts) in DEMO_ROWS.items():
        sub = cfgs[key].clone()
        sub.defrost()
        sub.merge_from_list(opts)
        sub.OUTPUT_DIR = os.path.join(out, "eval", name.replace(", ", "_").replace(" ", "_"))
        sub.freeze()
        logger.info("=== evaluating %s", name)
        rows[name] = evaluate(sub, os.path.join(cfgs[key].OUTPUT_DIR, "model_final.pth"))
    return rows


def run_demo(out: str, sam_checkpoint: str, iters: Optional[Dict[str, int]] = None, panel_image: Optional[str] = None,
             workers: int = 2, seed: int = 0) -> Tuple[Dict[str, Dict[str, float]], Optional[Dict]]:
    """Steps 1-4 of the module docstring (the dataset prepared by the caller); returns (the table's rows, the
    tiny SAM's report when it was trained here, else None).

    ``iters``: {"sam", "warmup", "stage1", "stage2"} iterations; "sam" > 0 trains the tiny SAM (else
    ``sam_checkpoint``, or the random tiny SAM when empty). ``workers``: processes for the trainings
    (`run_job_graph`; 1: in this process, in order). ``seed``: of every training, the SAM's included."""
    iters = iters or {}
    sam_iters = iters.get("sam", 0)
    if sam_iters > 0:
        sam_checkpoint = os.path.join(out, "tiny_sam", "sam_tiny.pth")
    cfgs = demo_configs(out, sam_checkpoint, iters, seed)
    jobs: Dict[str, Job] = {}
    after_warmup: Tuple[str, ...] = ()
    if "warmup" in cfgs:
        jobs["warmup"] = Job(warm_up_clip, (cfgs["warmup"], os.path.join(out, "clip_warmup", "clip.pth")))
        after_warmup = ("warmup",)
    after_sam: Tuple[str, ...] = ()
    if sam_iters > 0:
        splits = cfgs["stage2"].DATASETS.TRAIN[0], cfgs["stage2"].DATASETS.TEST[0]
        jobs["tiny_sam"] = Job(train_demo_sam, (*splits, sam_checkpoint, sam_iters, seed))
        after_sam = ("tiny_sam",)
    # In this order a free worker takes the first ready job: with two workers the SAM trains beside the warm-up,
    # and the oracle's run fills the wait for the SAM (measured: the graph ends ~10% sooner than in other orders).
    jobs["stage1"] = Job(train_job, ("SAM-MI stage 1: TSPP alone", cfgs["stage1"]), after_warmup)
    jobs["oracle"] = Job(train_job, ("SAM-MI stage 2 trained with the oracle's masks (the ceiling)", cfgs["oracle"]),
                         after_warmup)
    jobs["stage2"] = Job(train_job, (f"SAM-MI stage 2: the tiny SAM's masks injected "
                                     f"({sam_checkpoint or 'random weights'})", cfgs["stage2"]), ("stage1",) + after_sam)
    jobs["no_masks"] = Job(train_job, ("SAM-MI stage 2 without masks (TSPP's share of the gain)", cfgs["no_masks"]),
                           ("stage1",))
    jobs["baseline"] = Job(train_job, ("CAT-Seg baseline (SAM parts off)", cfgs["baseline"]), after_warmup)
    trained = run_job_graph(jobs, workers, log_dir=out)
    rows = evaluate_demo_rows(cfgs, out)

    baseline, stage2 = cfgs["baseline"], cfgs["stage2"]
    dataset = stage2.DATASETS.TEST[0]
    models = {"CAT-Seg": load_model(baseline, trained["baseline"]), "SAM-MI": load_model(stage2, trained["stage2"])}
    save_predictions_picture(models, dataset, os.path.join(out, "predictions.png"))
    draw_demo_panel(stage2, trained["stage2"], panel_image or DatasetCatalog.get(dataset)[0]["file_name"],
                    resolve_vocabulary(dataset), os.path.join(out, "panel.png"))
    return rows, trained.get("tiny_sam")


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
