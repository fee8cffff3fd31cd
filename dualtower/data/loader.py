"""Batches by step: which records a step reads is a pure function of (seed, step, rank), so a run resumes at
any step by starting from it, and loader workers decode whole batches in parallel without changing the order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import UserError
from ..model.seeds import augment_seed, epoch_seed
from ..naflex import Patches
from .base import BadSample, Source


class ShuffledPlan:
    """Each epoch a fresh permutation (seeded by seed and epoch); the last partial global batch is dropped.
    Global batch j of an epoch is split into `world` equal contiguous parts, one per rank, without overlap."""

    def __init__(self, n: int, global_batch: int, seed: int, rank: int = 0, world: int = 1):
        if global_batch % world:
            raise UserError(f"global batch {global_batch} is not divisible by the {world} processes")
        if n < global_batch:
            raise UserError(f"the data has {n} records, fewer than one global batch of {global_batch}")
        self.n, self.global_batch, self.seed, self.rank, self.world = n, global_batch, seed, rank, world
        self.steps_per_epoch = n // global_batch
        self._epoch, self._perm = -1, None

    def indices(self, step: int) -> list[int]:
        epoch, j = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        local = self.global_batch // self.world
        start = j * self.global_batch + self.rank * local
        return self._perm[start : start + local].tolist()


class SequentialPlan:
    """Every record once, in order, in batches (the last one may be short): for evaluation and embedding."""

    def __init__(self, n: int, batch: int):
        self.n, self.batch = n, batch
        self.steps = -(-n // batch)

    def indices(self, step: int) -> list[int]:
        return list(range(step * self.batch, min((step + 1) * self.batch, self.n)))


@dataclass
class Batch:
    step: int
    pixels: "torch.Tensor | Patches"  # (B, 3, S, S), or a NaFlex model's Patches; B may be below the planned
    # size when samples were skipped
    sample_ids: list[str]
    captions: list[str]  # tokenized by the consumer, which knows its model's tokenizer (and whether it needs one)
    labels: torch.Tensor  # (B,), -1 where the source has no classes
    image_keys: list[str] = field(default_factory=list)  # equal keys: the same image
    indices: list[int] = field(default_factory=list)  # the source record of each sample
    skips: list[tuple[str, str]] = field(default_factory=list)  # (reason, detail) of each skipped record

    def __len__(self) -> int:
        return len(self.sample_ids)


class StepBatches(torch.utils.data.Dataset):
    """Item k is this rank's batch of step `start + k`."""

    def __init__(self, source: Source, plan, transform, start: int, stop: int):
        self.source, self.plan, self.transform = source, plan, transform
        self.start, self.stop = start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, k: int) -> Batch:
        step = self.start + k
        pixels, captions, sample_ids, labels, image_keys, indices, skips = [], [], [], [], [], [], []
        for i in self.plan.indices(step):
            try:
                sample = self.source.load(i)
                # A seed per (run, step, record): augmentation is the same on resume and in any worker.
                pixels.append(self.transform(sample.image, seed=augment_seed(getattr(self.plan, "seed", 0), step, i)))
            except BadSample as e:
                skips.append((e.reason, e.detail or self.source.sample_id(i)))
                continue
            except Exception as e:  # one bad record must never stop a run: count it and go on
                skips.append(("error", f"{self.source.sample_id(i)}: {type(e).__name__}: {e}"))
                continue
            captions.append(sample.caption)
            sample_ids.append(sample.id)
            labels.append(sample.label)
            image_keys.append(sample.image_key)
            indices.append(i)
        return Batch(
            step=step,
            pixels=self.transform.collate(pixels),
            sample_ids=sample_ids,
            captions=captions,
            labels=torch.tensor(labels, dtype=torch.long),
            image_keys=image_keys,
            indices=indices,
            skips=skips,
        )


def batches(source: Source, plan, transform, start: int, stop: int, workers: int = 0):
    """An iterator over the batches of steps start..stop-1, decoded by `workers` processes ahead of use."""
    dataset = StepBatches(source, plan, transform, start, stop)
    # Its own generator: creating the loader must not draw from the global one, or a resumed run's random
    # state would be one draw ahead of the uninterrupted run's.
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                                         prefetch_factor=4 if workers else None,
                                         generator=torch.Generator().manual_seed(start))
    return iter(loader)
