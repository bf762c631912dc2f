"""Input pipeline: ``torch.utils.data.DataLoader`` with worker processes and pinned memory, whose
batches are a pure function of (seed, global step, rank).

Reading and augmenting a 2048x1024 street scene takes about 150 ms of one core; done serially in
the training process, a GPU would wait most of each step. A DataLoader with N worker processes
prepares the next batches while the current one trains. What stays as before: batch ``step`` of
rank ``r`` holds the items ``batch_indices(..., step, seed, r, world)``, and each item's random
augmentation (scale, crop, flip) draws from torch's RNG seeded by (seed, stream, step, rank,
position in the batch) alone, so 0 or N workers, a restarted worker and a resumed job all see
exactly the same batches.

Each item is drawn inside ``torch.random.fork_rng``: with 0 workers the training process's own
RNG is left as it was, so the training step's randomness does not depend on how loading ran.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def batch_indices(num_items: int, batch_size: int, step: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """Item indices of one rank's batch at a global ``step``: a pure function, so a resumed run
    (or a restarted worker) draws exactly the batches an uninterrupted run would.

    Each epoch is a seeded permutation of the items cut into ``world`` equal shards (the remainder
    is left out of that epoch); a rank walks its shard in batches of ``batch_size``.
    """
    if num_items < world:
        raise ValueError(f"{num_items} items cannot be sharded over {world} workers")
    per_rank = num_items // world
    batch = min(batch_size, per_rank)
    batches_per_epoch = per_rank // batch
    epoch, position = divmod(step, batches_per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    shard = torch.randperm(num_items, generator=generator)[: per_rank * world][rank::world]
    return shard[position * batch : (position + 1) * batch].tolist()


# Streams keep the source's and the target's augmentation draws apart.
SOURCE_STREAM, TARGET_STREAM = 0, 1
_MIX = 1_000_003


def item_seed(seed: int, stream: int, step: int, rank: int, position: int) -> int:
    """The RNG seed of one item of one batch: a pure function of where it sits, never of who loads it."""
    value = seed
    for part in (stream, step, rank, position):
        value = value * _MIX + part
    return value % (2**63)


class SeededItems(Dataset):
    """``dataset`` indexed by ``(item seed, index)``: ``dataset[index]`` drawn with torch's RNG seeded
    by the item seed, in a forked RNG (the caller's RNG state is untouched)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        seed, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class StepBatches(Sampler[list[tuple[int, int]]]):
    """The item keys of rank ``rank``'s batches for global steps ``first_step .. first_step + steps - 1``."""

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        first_step: int,
        steps: int,
        seed: int,
        stream: int,
        rank: int = 0,
        world: int = 1,
    ):
        self.num_items, self.batch_size = num_items, batch_size
        self.first_step, self.steps = first_step, steps
        self.seed, self.stream, self.rank, self.world = seed, stream, rank, world

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        # Which items: the epoch permutation of batch_indices (the target pool uses seed + 1, as before).
        order_seed = self.seed + self.stream
        for step in range(self.first_step, self.first_step + self.steps):
            indices = batch_indices(self.num_items, self.batch_size, step, order_seed, self.rank, self.world)
            yield [
                (item_seed(self.seed, self.stream, step, self.rank, position), index)
                for position, index in enumerate(indices)
            ]


def training_loader(
    dataset: Dataset,
    batch_size: int,
    first_step: int,
    steps: int,
    seed: int,
    stream: int,
    rank: int = 0,
    world: int = 1,
    workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """Batches (images (N, 3, H, W), labels (N, H, W)) of global steps ``first_step`` onwards."""
    sampler = StepBatches(len(dataset), batch_size, first_step, steps, seed, stream, rank, world)
    # A generator of its own: DataLoader draws its workers' base seed from it, not from the global RNG.
    return DataLoader(
        SeededItems(dataset),
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
    )


def collate_evaluation(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Images stacked (they share the input size); labels kept apart (native labels may differ in size)."""
    return torch.stack([image for image, _ in items]), [label for _, label in items]


def evaluation_loader(
    dataset: Dataset, indices: list[int], batch_size: int, workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """``dataset[indices]`` in order, in batches of ``batch_size`` (no randomness, no augmentation)."""
    return DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        collate_fn=collate_evaluation,
        generator=torch.Generator(),
    )


def load_images(
    dataset: Dataset, indices: list[int], pool: concurrent.futures.Executor | None = None, pin_memory: bool = False
) -> torch.Tensor:
    """The images of ``dataset[indices]`` stacked (N, 3, H, W), decoded concurrently on ``pool``'s threads
    (PNG decoding and resizing release the GIL), pinned for an asynchronous copy to a GPU if asked."""
    items = pool.map(dataset.__getitem__, indices) if pool is not None else map(dataset.__getitem__, indices)
    images = torch.stack([image for image, _ in items])
    return images.pin_memory() if pin_memory else images
