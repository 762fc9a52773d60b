"""Optimizer parameter groups of SAM-MI / CAT-Seg: per-module learning rates, norm and embedding weight decay,
full-model gradient clipping (cvlab-kaist/CAT-Seg train_net.py ``build_optimizer``, as in Mask2Former)."""
import itertools
import logging
from collections import OrderedDict
from typing import Any, Dict, List, Set

import torch
from detectron2.solver.build import maybe_add_gradient_clipping
from tabulate import tabulate
from torch.nn.parallel import DistributedDataParallel

NORM_TYPES = (
    torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.GroupNorm, torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm, torch.nn.SyncBatchNorm, torch.nn.InstanceNorm2d,
)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW (or SGD) with one group per parameter: CLIP at BASE_LR * CLIP_MULTIPLIER, the prompter (TSPP) at
    BASE_LR * TSPP_MULTIPLIER (Sec. 3.5: "a reduced learning rate" in stage 2), norm/embedding weight decay
    from the solver keys; full-model gradient clipping from SOLVER.CLIP_GRADIENTS. Groups are logged."""
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
            elif full_name.startswith("prompter."):
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
