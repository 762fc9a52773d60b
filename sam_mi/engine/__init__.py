"""Training and evaluation engine: detectron2's trainer with SAM-MI's parameter groups, schedule and evaluation."""
from .defaults import setup, train_or_evaluate
from .optimizer import build_optimizer, unwrap
from .trainer import Trainer, create_ddp_model

__all__ = ["Trainer", "build_optimizer", "create_ddp_model", "setup", "train_or_evaluate", "unwrap"]
