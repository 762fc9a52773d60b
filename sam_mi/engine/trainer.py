"""detectron2's DefaultTrainer with SAM-MI's data, optimizer, schedule, DDP wrapper and evaluation."""
import os
from collections import OrderedDict

import torch
from detectron2.data import build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.engine import defaults as d2_defaults
from detectron2.solver import build_lr_scheduler
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from detectron2.utils import comm
from fvcore.common.param_scheduler import PolynomialDecayParamScheduler
from torch.nn.parallel import DistributedDataParallel

from ..data.dataset_mapper import SemanticDatasetMapper
from ..data.vocabulary import dataset_vocabulary
from ..evaluation import build_evaluator
from .optimizer import build_optimizer, unwrap


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
