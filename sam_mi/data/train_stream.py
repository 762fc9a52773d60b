"""A training data stream that can start at any iteration and gives every sample its own random state, so
that a run resumed from a checkpoint sees exactly the batches and augmentations of the uninterrupted run,
whatever the number of data-loader workers.

Indices follow detectron2's ``TrainingSampler`` (one generator seeded once, a new permutation per epoch;
rank r of W takes every W-th index). Sample number p of rank r is the stream's sample g = p W + r, mapped with
Python's, NumPy's and torch's generators seeded from (seed, g), so its augmentation depends neither on the
worker that maps it, nor on what was mapped before, nor on how many processes share the batch. Batches are consecutive samples (no aspect-ratio grouping: SAM-MI trains on fixed-size
crops, so grouping by the original image's aspect would only reorder the stream).
"""
import hashlib
import itertools
from typing import Callable, Dict, Iterator, List, Sequence

import torch
import torch.utils.data as torchdata

from ..utils.rng import preserved_rng, seed_all


def sample_seed(seed: int, position: int) -> int:
    """A 63-bit seed for the stream's sample ``position`` (SHA-256: stable across processes and runs)."""
    digest = hashlib.sha256(f"{seed}:{position}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def training_indices(size: int, seed: int) -> Iterator[int]:
    """detectron2 TrainingSampler's infinite stream of shuffled indices for ``seed``."""
    g = torch.Generator()
    g.manual_seed(seed)
    while True:
        yield from torch.randperm(size, generator=g).tolist()


class ResumableTrainingStream(torchdata.IterableDataset):
    """Mapped samples of one rank from sample ``start`` on (``start`` = iteration x per-rank batch size)."""

    def __init__(self, records: Sequence[Dict], mapper: Callable[[Dict], Dict], batch_size: int, seed: int,
                 start: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if not records:
            raise ValueError("the training set is empty: check DATASETS.TRAIN and DETECTRON2_DATASETS")
        self.records, self.mapper = list(records), mapper
        self.batch_size, self.seed, self.start = batch_size, seed, start
        self.rank, self.world_size = rank, world_size

    def _positions(self) -> Iterator[int]:
        """This worker's sample positions: the k-th batch from the start goes to worker k % num_workers (the
        order in which torch's DataLoader collects batches from its workers)."""
        info = torchdata.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        first_batch = self.start // self.batch_size
        for b in itertools.count(first_batch + worker, workers):
            yield from range(b * self.batch_size, (b + 1) * self.batch_size)

    def __iter__(self) -> Iterator[Dict]:
        stream = itertools.islice(training_indices(len(self.records), self.seed), self.rank, None, self.world_size)
        cursor, index = -1, None
        main_process = torchdata.get_worker_info() is None
        for p in self._positions():
            while cursor < p:  # advance this rank's index stream to position p (cheap: integers only)
                index, cursor = next(stream), cursor + 1
            if main_process:  # do not move the training loop's own random streams
                with preserved_rng():
                    item = self._map(index, p)
            else:
                item = self._map(index, p)
            yield item

    def _map(self, index: int, position: int) -> Dict:
        seed_all(sample_seed(self.seed, position * self.world_size + self.rank))
        return self.mapper(self.records[index])


def build_resumable_train_loader(records: List[Dict], mapper, total_batch_size: int, num_workers: int,
                                 seed: int, start_iter: int = 0) -> torchdata.DataLoader:
    """Batches (lists of mapped dicts) of this rank, from iteration ``start_iter`` on."""
    from detectron2.data.build import trivial_batch_collator
    from detectron2.utils import comm

    world = comm.get_world_size()
    if total_batch_size % world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH ({total_batch_size}) must be divisible by the {world} processes")
    batch = total_batch_size // world
    stream = ResumableTrainingStream(records, mapper, batch, seed, start_iter * batch, comm.get_rank(), world)
    # its own generator: creating the loader's iterator must not draw from the global torch stream
    return torchdata.DataLoader(stream, batch_size=batch, num_workers=num_workers, drop_last=True,
                                collate_fn=trivial_batch_collator, generator=torch.Generator().manual_seed(seed))
