"""Which images make batch i: a function of (seed, i) alone, so a resumed or segmented run sees the
batches of one that never stopped. Every engine's train stream and the tiny pre-training draw their
batches here; rethink.loop only consumes them."""

from __future__ import annotations

import numpy as np
import torch


def seed_mix(*ints: int) -> int:
    """A 32-bit seed from integers (numpy's SeedSequence hash)."""
    return int(np.random.SeedSequence([int(i) for i in ints]).generate_state(1)[0])


class IterationSampler:
    """Sampler yielding start, start + 1, ... (for ever): item i of a stream dataset is batch i."""

    def __init__(self, start: int):
        self.start = int(start)

    def __iter__(self):
        i = self.start
        while True:
            yield i
            i += 1


def _identity(x):
    return x


LOADER_TIMEOUT_S = 600


def iteration_loader(ds, start_iter: int, workers: int, seed: int, rank: int = 0):
    """Batches start_iter, start_iter + 1, ... of `ds` (a Dataset whose item i is batch i, a function
    of (seed, i)), prepared by `workers` processes ahead of the loop (0: in this process). A batch
    that no worker delivers within LOADER_TIMEOUT_S (a stuck worker: a full disk, a hung file
    system) is an error, which the loop turns into a failed job, instead of a GPU job that waits
    for its walltime; a batch takes well under a second to prepare."""
    # its own generator: a DataLoader draws its workers' base seed from the global torch RNG
    # otherwise, which would shift the RNG (RoI sampling) of a resumed run against an unbroken one
    loader = torch.utils.data.DataLoader(
        ds,
        sampler=IterationSampler(start_iter),
        batch_size=None,
        collate_fn=_identity,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers > 0 else None,
        timeout=LOADER_TIMEOUT_S if workers > 0 else 0,
        generator=torch.Generator().manual_seed(seed_mix(seed, start_iter, rank)),
    )
    return iter(loader)


def aspect_groups(sizes) -> list[int]:
    """Group of each image for aspect-ratio grouping, from (width, height): 0 wide (w > h), 1 tall
    or square, as detectron2's AspectRatioGroupedDataset buckets them."""
    return [0 if int(w) > int(h) else 1 for w, h in sizes]


class GroupedBatches:
    """Aspect-ratio grouping (detectron2's DATALOADER.ASPECT_RATIO_GROUPING) as a function of
    (seed, iteration): a batch holds wide images only or tall ones only, so it is padded little.

    Epoch e: each group's images in an order seeded by (seed, e, 1 + group), cut into batches of
    `batch`; the groups' leftovers (fewer than `batch` each) together, in that order, cut the same
    way (a mixed batch, at most one per epoch with two groups) and the last < `batch` dropped for
    this epoch; then the epoch's batches in an order seeded by (seed, e, 0). Every epoch has the
    same number of batches, so batch i lies in epoch i // that number. Within an epoch no image
    repeats; over epochs every image is drawn. detectron2 instead buckets a stream of random images
    on the fly, which makes a batch depend on the run's history, not on (seed, i) alone: a resumed
    run would see other batches than one that never stopped."""

    def __init__(self, seed: int, batch: int, groups):
        self.seed, self.batch = int(seed), int(batch)
        self.groups = np.asarray(groups, dtype=np.int64)
        if self.groups.size == 0:
            raise ValueError("the train set is empty")
        self.members = [np.flatnonzero(self.groups == g) for g in np.unique(self.groups)]
        full = sum(len(m) // self.batch for m in self.members)
        self.per_epoch = full + sum(len(m) % self.batch for m in self.members) // self.batch
        if self.per_epoch == 0:
            raise ValueError(f"{self.groups.size} training images do not fill one batch of {self.batch}")
        self._epoch: tuple[int, np.ndarray] | None = None

    def _plan(self, epoch: int) -> np.ndarray:
        if self._epoch is None or self._epoch[0] != epoch:
            batches, rest = [], []
            for g, m in enumerate(self.members):
                order = m[np.random.default_rng([self.seed, epoch, 1 + g]).permutation(len(m))]
                k = len(order) // self.batch * self.batch
                batches += list(order[:k].reshape(-1, self.batch))
                rest += list(order[k:])
            rest = np.asarray(rest, dtype=np.int64)
            k = len(rest) // self.batch * self.batch
            batches += list(rest[:k].reshape(-1, self.batch))
            plan = np.stack(batches)[np.random.default_rng([self.seed, epoch, 0]).permutation(len(batches))]
            self._epoch = (epoch, plan)
        return self._epoch[1]

    def indices(self, iteration: int, rank: int = 0, world: int = 1) -> list[int]:
        """This process's share of batch `iteration` (as batch_indices splits it)."""
        if self.batch % world:
            raise ValueError(f"batch {self.batch} is not divisible by {world} processes")
        per = self.batch // world
        epoch, k = divmod(int(iteration), self.per_epoch)
        return [int(i) for i in self._plan(epoch)[k][rank * per : (rank + 1) * per]]


def batch_indices(seed: int, iteration: int, batch: int, n: int, rank: int = 0, world: int = 1) -> list[int]:
    """Dataset indices of this process's share of batch `iteration`: positions [i*B, (i+1)*B) of an
    endless sequence of epochs, each a permutation of range(n) seeded by (seed, epoch); process `rank`
    takes positions rank*B/world ... (rank+1)*B/world - 1. Depends only on its arguments, so every
    engine's stream gives a resumed run the batches of one that never stopped."""
    if n <= 0:
        raise ValueError("the train set is empty")
    if batch % world:
        raise ValueError(f"batch {batch} is not divisible by {world} processes")
    per = batch // world
    first = iteration * batch + rank * per
    out, perm, perm_epoch = [], None, None
    for pos in range(first, first + per):
        epoch = pos // n
        if epoch != perm_epoch:
            perm, perm_epoch = np.random.default_rng([int(seed), epoch]).permutation(n), epoch
        out.append(int(perm[pos % n]))
    return out
