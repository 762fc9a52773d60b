#!/usr/bin/env python
"""Train and evaluate SAM-MI (and its CAT-Seg baseline) with detectron2.

    python tools/train_net.py --config-file configs/coco-stuff-171/sam_mi_vitb16_384_stage1.yaml --num-gpus 4
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
"""
import itertools
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Set

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import build_detection_train_loader
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.engine import defaults as d2_defaults
from detectron2.evaluation import verify_results
from detectron2.solver import build_lr_scheduler
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import PolynomialDecayParamScheduler
from tabulate import tabulate
from torch.nn.parallel import DistributedDataParallel

import sam_mi  # noqa: F401  (registers datasets and SAMMI)
from sam_mi import add_sam_mi_config
from sam_mi.data.dataset_mapper import SemanticDatasetMapper
from sam_mi.data.vocabulary import dataset_vocabulary
from sam_mi.evaluation import build_evaluator

NORM_TYPES = (
    torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.GroupNorm, torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm, torch.nn.SyncBatchNorm, torch.nn.InstanceNorm2d,
)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        # DefaultTrainer wraps the model with detectron2's create_ddp_model; ours differs in two ways (below).
        d2_create_ddp_model = d2_defaults.create_ddp_model
        d2_defaults.create_ddp_model = create_ddp_model
        try:
            super().__init__(cfg)
        finally:
            d2_defaults.create_ddp_model = d2_create_ddp_model

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=SemanticDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupPolyLR":
            return build_lr_scheduler(cfg, optimizer)  # WarmupCosineLR etc. from detectron2
        sched = WarmupParamScheduler(
            PolynomialDecayParamScheduler(1.0, cfg.SOLVER.POLY_LR_POWER),
            cfg.SOLVER.WARMUP_FACTOR,
            min(cfg.SOLVER.WARMUP_ITERS / cfg.SOLVER.MAX_ITER, 1.0),
            cfg.SOLVER.WARMUP_METHOD,
        )
        return LRMultiplier(optimizer, multiplier=sched, max_iter=cfg.SOLVER.MAX_ITER)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate every dataset of DATASETS.TEST with its own vocabulary (one text-embedding cache entry
        per vocabulary), then defer to detectron2's loop for loading, inference and metrics."""
        if evaluators is not None:
            raise ValueError("SAM-MI builds one evaluator per dataset; call test() without evaluators")
        results = OrderedDict()
        for name in cfg.DATASETS.TEST:
            unwrap(model).set_vocabulary(dataset_vocabulary(name))
            sub = cfg.clone()
            sub.defrost()
            sub.DATASETS.TEST = (name,)
            results[name] = super().test(sub, model)
        return results[cfg.DATASETS.TEST[0]] if len(results) == 1 else results


def create_ddp_model(model: torch.nn.Module, **kwargs) -> torch.nn.Module:
    """DistributedDataParallel when there are several processes. Unlike detectron2's: (1) unused parameters are
    allowed, because on a batch where SAM returns no mask DMI is skipped and its parameters get no gradient;
    (2) CPU processes (gloo) work too, by not pinning device_ids."""
    if comm.get_world_size() == 1:
        return model
    on_gpu = next(model.parameters()).device.type == "cuda"
    return DistributedDataParallel(
        model,
        device_ids=[comm.get_local_rank()] if on_gpu else None,
        broadcast_buffers=False,
        find_unused_parameters=True,
    )


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW (or SGD) with one group per parameter: CLIP at BASE_LR * CLIP_MULTIPLIER, TSPP at
    BASE_LR * TSPP_MULTIPLIER, norm/embedding weight decay from the solver keys; full-model gradient
    clipping from SOLVER.CLIP_GRADIENTS. The groups are logged as a table."""
    base_lr, wd = cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY
    params: List[Dict[str, Any]] = []
    rows = []
    memo: Set[torch.nn.Parameter] = set()
    for module_name, module in unwrap(model).named_modules():
        for param_name, value in module.named_parameters(recurse=False):
            if not value.requires_grad or value in memo:
                continue
            memo.add(value)
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            lr, decay = base_lr, wd
            if full_name.startswith("clip."):
                lr = base_lr * cfg.SOLVER.CLIP_MULTIPLIER
            elif full_name.startswith("tspp."):
                lr = base_lr * cfg.SOLVER.TSPP_MULTIPLIER
            if isinstance(module, NORM_TYPES):
                decay = cfg.SOLVER.WEIGHT_DECAY_NORM
            elif isinstance(module, torch.nn.Embedding) or "padding_" in param_name:
                decay = cfg.SOLVER.WEIGHT_DECAY_EMBED
            params.append({"params": [value], "lr": lr, "weight_decay": decay})
            rows.append((full_name.split(".")[0], lr, decay, value.numel()))
    _log_param_groups(rows)

    optim_type = cfg.SOLVER.OPTIMIZER
    if optim_type == "ADAMW":
        opt_cls, kwargs = torch.optim.AdamW, {}
    elif optim_type == "SGD":
        opt_cls, kwargs = torch.optim.SGD, {"momentum": cfg.SOLVER.MOMENTUM}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be ADAMW or SGD, got {optim_type!r}")
    clip_cfg = cfg.SOLVER.CLIP_GRADIENTS
    if clip_cfg.ENABLED and clip_cfg.CLIP_TYPE == "full_model":
        opt_cls = _full_model_gradient_clipping(opt_cls, clip_cfg.CLIP_VALUE, clip_cfg.NORM_TYPE)
        return opt_cls(params, base_lr, **kwargs)
    # per-parameter clipping ("value"/"norm") is detectron2's own wrapper
    return maybe_add_gradient_clipping(cfg, opt_cls)(params, base_lr, **kwargs)


def _full_model_gradient_clipping(optim_cls, clip_value: float, norm_type: float):
    """Clip the gradient norm of all parameters together before each step (CAT-Seg / Mask2Former)."""

    class FullModelGradientClippingOptimizer(optim_cls):
        def step(self, closure=None):
            all_params = itertools.chain(*[g["params"] for g in self.param_groups])
            torch.nn.utils.clip_grad_norm_(all_params, clip_value, norm_type)
            return super().step(closure=closure)

    return FullModelGradientClippingOptimizer


def _log_param_groups(rows) -> None:
    """One line per (module, lr, weight decay) with its tensor and parameter counts."""
    summary: Dict = OrderedDict()
    for module, lr, decay, n in rows:
        key = (module, lr, decay)
        tensors, count = summary.get(key, (0, 0))
        summary[key] = (tensors + 1, count + n)
    table = [(m, f"{lr:.2e}", f"{d:.1e}", t, f"{c / 1e6:.3f}M") for (m, lr, d), (t, c) in summary.items()]
    logging.getLogger("sam_mi").info(
        "Optimizer parameter groups:\n"
        + tabulate(table, headers=["module", "lr", "weight decay", "tensors", "params"], tablefmt="pipe")
    )


def setup(args):
    cfg = get_cfg()
    add_sam_mi_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="sam_mi")
    return cfg


def main(args):
    cfg = setup(args)
    torch.set_float32_matmul_precision("high")
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process() and len(cfg.DATASETS.TEST) == 1:
            verify_results(cfg, res)  # checks TEST.EXPECTED_RESULTS when given
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
