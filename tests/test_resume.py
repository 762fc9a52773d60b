"""Resume reproduces the uninterrupted run: a tiny run stopped after a checkpoint and resumed gives the same
per-iteration losses after the resume point and the same final weights (data stream position, augmentation
and training-time TSPP sampling random states restored), with two data-loader workers."""
import torch
from detectron2.engine import HookBase

from conftest import tiny_cfg

from sam_mi.engine import Trainer
from sam_mi.utils.rng import seed_all


class RecordLosses(HookBase):
    def __init__(self, losses, stop_at=None):
        self.losses, self.stop_at = losses, stop_at

    def after_step(self):
        self.losses[self.trainer.iter] = float(self.trainer.storage.history("total_loss").latest())
        if self.stop_at is not None and self.trainer.iter == self.stop_at:
            raise KeyboardInterrupt("simulated kill")


def _cfg(out):
    return tiny_cfg(opts=["SOLVER.MAX_ITER", 6, "SOLVER.CHECKPOINT_PERIOD", 3, "OUTPUT_DIR", str(out),
                          "DATALOADER.NUM_WORKERS", 2, "SOLVER.IMS_PER_BATCH", 2, "DATASETS.TEST", ()])


def _run(cfg, losses, resume=False, stop_at=None):
    trainer = Trainer(cfg)
    trainer.register_hooks([RecordLosses(losses, stop_at)])
    trainer.resume_or_load(resume=resume)
    try:
        trainer.train()
    except KeyboardInterrupt:
        pass
    return trainer


def test_killed_and_resumed_run_equals_the_uninterrupted_run(tmp_path, synthetic_root):
    seed_all(0)
    full = {}
    reference = _run(_cfg(tmp_path / "full"), full)
    seed_all(0)
    killed = {}
    _run(_cfg(tmp_path / "killed"), killed, stop_at=4)  # dies after the checkpoint of iteration 2
    assert (tmp_path / "killed" / "model_0000002.pth").exists() and 4 in killed
    seed_all(12345)  # whatever the new process's random state, the checkpoint's is restored
    resumed = {}
    trainer = _run(_cfg(tmp_path / "killed"), resumed, resume=True)
    assert sorted(resumed) == [3, 4, 5]
    for it in (3, 4, 5):
        assert resumed[it] == full[it], (it, resumed[it], full[it])
    assert killed[3] == full[3] and killed[4] == full[4]
    a, b = reference.model.state_dict(), trainer.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stream_is_the_same_whatever_the_workers_and_the_start():
    """Batches (indices and augmentation draws) depend only on (seed, rank, position)."""
    import numpy as np

    from sam_mi.data.train_stream import build_resumable_train_loader

    records = [{"i": i} for i in range(7)]
    mapper = lambda r: (r["i"], float(np.random.rand()), float(torch.rand(())))  # noqa: E731
    batches = lambda workers, start: [b for _, b in zip(range(5), build_resumable_train_loader(  # noqa: E731
        records, mapper, 2, workers, seed=3, start_iter=start))]
    plain = batches(0, 0)
    assert batches(2, 0) == plain
    assert batches(2, 2) == plain[2:] + batches(0, 5)[:2]
    assert batches(0, 3) == plain[3:] + batches(0, 5)[:3]
    assert sorted(i for b in plain[:3] for i, _, _ in b[:7]) != list(range(6))  # shuffled, not in order


def test_resume_skips_a_damaged_last_checkpoint(tmp_path, synthetic_root):
    """A run killed while writing its last checkpoint: --resume warns and continues from the previous one."""
    cfg = tiny_cfg(opts=["SOLVER.MAX_ITER", 4, "SOLVER.CHECKPOINT_PERIOD", 2, "OUTPUT_DIR", str(tmp_path),
                         "SOLVER.IMS_PER_BATCH", 1, "DATASETS.TEST", ()])
    _run(cfg, {}, stop_at=3)  # model_0000001.pth, model_0000003.pth and model_final.pth (iteration 3)
    for name in ("model_final.pth", "model_0000003.pth"):  # the newest two are truncated
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 3])
    (tmp_path / "last_checkpoint").write_text("model_final.pth")
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 2  # resumed from model_0000001.pth
