"""detectron2's DefaultTrainer with SAM-MI's data, optimizer, schedule, DDP wrapper and evaluation."""
import logging
import os
import weakref
from collections import OrderedDict

import torch
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer, hooks
from detectron2.engine import defaults as d2_defaults
from detectron2.solver import build_lr_scheduler
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from detectron2.utils import comm
from fvcore.common.param_scheduler import PolynomialDecayParamScheduler
from torch.nn.parallel import DistributedDataParallel

from detectron2.evaluation import DatasetEvaluators

from ..data.dataset_mapper import EvalDatasetMapper, SemanticDatasetMapper
from ..data.train_stream import build_resumable_train_loader
from ..data.vocabulary import resolve_vocabulary
from ..evaluation import build_evaluator
from ..evaluation.sam_mi_stats import SAMMIStatsEvaluator
from ..utils.checkpoint_io import CheckedCheckpointer, CheckpointFileError
from ..utils.rng import preserved_rng, restore_rng_state
from .hooks import RNGStateHook
from .optimizer import build_optimizer, unwrap

logger = logging.getLogger(__name__)


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer whose resume continues the interrupted run exactly: the data stream starts
    at the resumed iteration (sam_mi/data/train_stream.py) and the random states saved with the checkpoint are
    restored (hooks.RNGStateHook); evaluation during training leaves the random streams untouched."""

    def __init__(self, cfg):
        # seed of the training stream's shuffling and augmentations: SEED, or one random seed shared by all
        # ranks (saved in the checkpoints, so that a resumed run continues the same stream)
        self.loader_seed = int(cfg.SEED) if cfg.SEED >= 0 else comm.shared_random_seed()
        # DefaultTrainer wraps the model with detectron2's create_ddp_model; ours differs in two ways (below).
        d2_create_ddp_model = d2_defaults.create_ddp_model
        d2_defaults.create_ddp_model = create_ddp_model
        try:
            super().__init__(cfg)
        finally:
            d2_defaults.create_ddp_model = d2_create_ddp_model
        self.rng_states = None
        # loading names the file and the key when MODEL.WEIGHTS or a checkpoint to resume is not a checkpoint
        self.checkpointer = CheckedCheckpointer(self._trainer.model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))

    def build_hooks(self):
        """detectron2's hooks, with the random states gathered right before each checkpoint."""
        hook_list = super().build_hooks()
        rng = RNGStateHook(self.cfg.SOLVER.CHECKPOINT_PERIOD, self.cfg.SOLVER.MAX_ITER)
        # only the main process has a PeriodicCheckpointer; every rank gathers at the same place in its list
        anchors = (hooks.PeriodicCheckpointer, hooks.EvalHook)
        at = next((i for i, h in enumerate(hook_list) if isinstance(h, anchors)), len(hook_list))
        for h in hook_list:  # detectron2 writes metrics every 20 iterations; SOLVER.LOG_PERIOD sets it
            if isinstance(h, hooks.PeriodicWriter):
                h._period = self.cfg.SOLVER.LOG_PERIOD
        return hook_list[:at] + [rng] + hook_list[at:]

    def state_dict(self):
        state = super().state_dict()
        state["loader_seed"] = self.loader_seed
        if self.rng_states is not None:
            state["rng_states"] = self.rng_states
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self._resume_state = state

    def resume_or_load(self, resume: bool = True):
        """Load MODEL.WEIGHTS, or resume from the last checkpoint of OUTPUT_DIR: model, optimizer, scheduler,
        iteration, the data stream's position and every rank's random-number states."""
        self._resume_state = None
        try:
            super().resume_or_load(resume=resume)
        except CheckpointFileError as e:
            if not resume or not self.checkpointer.has_checkpoint():
                raise
            self._resume_from_previous(e)
        state = self._resume_state
        if not resume or state is None:
            return
        self._trainer.data_loader = self.build_train_loader(self.cfg, start_iter=self.start_iter,
                                                            seed=state.get("loader_seed"))
        self._trainer._data_loader_iter_obj = None
        states = state.get("rng_states")
        if states is None:
            logger.warning("the checkpoint holds no random-number states (older run): the resumed run's random "
                           "draws will differ from the uninterrupted run's")
        else:
            rank = comm.get_rank()
            if len(states) != comm.get_world_size():
                logger.warning("checkpoint written by %d processes, resumed with %d: random states of rank %d "
                               "reused", len(states), comm.get_world_size(), rank % len(states))
            restore_rng_state(states[rank % len(states)])

    def _resume_from_previous(self, error: CheckpointFileError) -> None:
        """The last checkpoint cannot be read (a run killed while writing it, a full disk): resume from the
        newest one that can, with a warning naming the damaged file; stop if none can."""
        damaged = self.checkpointer.get_checkpoint_file()
        candidates = sorted(self.checkpointer.get_all_checkpoint_files(), key=os.path.getmtime, reverse=True)
        for path in candidates:
            if os.path.abspath(path) == os.path.abspath(damaged):
                continue
            try:
                self.checkpointer.load(path)
            except CheckpointFileError:
                continue
            logger.warning("resume: %s is damaged (%s); resumed from %s instead", damaged, error, path)
            self.start_iter = self.iter + 1
            return
        raise CheckpointFileError(f"cannot resume: {error}; no earlier checkpoint in {self.cfg.OUTPUT_DIR} could "
                                  "be read (delete the damaged file and its 'last_checkpoint' entry to start over)")

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """The dataset's metric evaluator, plus SAM-MI's points / masks per image (Table 6)."""
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return DatasetEvaluators([build_evaluator(cfg, dataset_name, output_folder), SAMMIStatsEvaluator()])

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """Images through the project's reader (sam_mi/data/image_io.py: files named on any error)."""
        return build_detection_test_loader(cfg, dataset_name, mapper=EvalDatasetMapper(cfg))

    def build_train_loader(self, cfg, start_iter: int = 0, seed=None):
        """Batches from iteration ``start_iter`` on (sam_mi/data/train_stream.py: each sample's augmentation
        has its own random state, so the stream is the same whatever the workers or the resume point)."""
        records = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
        return build_resumable_train_loader(
            records, SemanticDatasetMapper(cfg, is_train=True), cfg.SOLVER.IMS_PER_BATCH,
            cfg.DATALOADER.NUM_WORKERS, self.loader_seed if seed is None else seed, start_iter,
        )

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
            unwrap(model).set_vocabulary(resolve_vocabulary(name, cfg.MODEL.SAM_MI.VOCABULARY_JSON))
            sub = cfg.clone()
            sub.defrost()
            sub.DATASETS.TEST = (name,)
            with preserved_rng():  # evaluation during training must not shift the training's random draws
                results[name] = super().test(sub, model)
        return results[cfg.DATASETS.TEST[0]] if len(results) == 1 else results  # {} without test sets


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
