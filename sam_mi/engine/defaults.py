"""Config set-up and the train / evaluate entry point behind tools/train_net.py."""
from detectron2.config import get_cfg
from detectron2.engine import default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_sam_mi_config
from ..utils.checkpoint_io import CheckedCheckpointer
from .trainer import Trainer


def setup(args):
    """A frozen config from ``args.config_file`` and ``args.opts``, with detectron2's and SAM-MI's loggers."""
    cfg = get_cfg()
    add_sam_mi_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="sam_mi")
    return cfg


def train_or_evaluate(args):
    """Train (resuming with ``--resume``) or, with ``--eval-only``, evaluate MODEL.WEIGHTS on DATASETS.TEST."""
    import torch

    cfg = setup(args)
    torch.set_float32_matmul_precision("high")
    if args.eval_only:
        model = Trainer.build_model(cfg)
        CheckedCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process() and len(cfg.DATASETS.TEST) == 1:
            verify_results(cfg, res)  # checks TEST.EXPECTED_RESULTS when given
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()
