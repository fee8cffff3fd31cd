"""Token-budget batches for NaFlex training: a batch holds as many images as fit `max_tokens` once padded to its
longest image, and images are grouped by length into buckets first, so that a batch is not padded far past most
of its images and the padded shapes repeat (a few per bucket) instead of changing every step.

A bucket covers a range of lengths; its batches hold `max_tokens // longest_in_bucket` images each (rounded down
to a multiple of the processes, which split a batch evenly). Which records make each batch is a pure function of
(seed, epoch): records are shuffled, dealt into their buckets, cut into batches (a last partial batch per bucket is
dropped), and the batches shuffled; so the batches per epoch are the same count every epoch, and a run resumes at
any step.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from ..model.seeds import epoch_seed


def bucket_edges(max_length: int, buckets: int) -> list[int]:
    """The upper length of each bucket: equal ranges of (0, max_length]."""
    if buckets < 1:
        raise UserError(f"buckets must be at least 1, got {buckets}")
    return sorted({max(1, round(max_length * (b + 1) / buckets)) for b in range(buckets)})


def pack_by_tokens(lengths: list[int], max_tokens: int, buckets: int, max_length: int,
                   order: list[int] | None = None, multiple: int = 1) -> list[list[int]]:
    """Batches of record indices (in `order`, default as given) whose count x bucket top fits `max_tokens`."""
    edges = bucket_edges(max_length, buckets)
    if max_tokens < edges[-1] * multiple:
        raise UserError(f"max_tokens_per_batch {max_tokens} does not hold {multiple} image(s) of {edges[-1]} "
                         "patches; raise it or lower the patch budget")
    groups: list[list[int]] = [[] for _ in edges]
    for i in (range(len(lengths)) if order is None else order):
        if not 0 <= lengths[i] <= max_length:
            raise UserError(f"record {i} has {lengths[i]} patches, outside 1..{max_length}")
        if lengths[i] == 0:  # unreadable: in no batch
            continue
        groups[next(b for b, top in enumerate(edges) if lengths[i] <= top)].append(i)
    batches = []
    for top, group in zip(edges, groups):
        per_batch = max_tokens // top // multiple * multiple
        batches += [group[j : j + per_batch] for j in range(0, len(group) - per_batch + 1, per_batch)]
    return batches


def record_lengths(source, transform, workers: int = 4) -> list[int]:
    """Each record's patch count under a NaFlex `transform` (0 for a record that cannot be read), from its image
    size; records are decoded by a thread pool."""
    from concurrent.futures import ThreadPoolExecutor

    def length(i: int) -> int:
        try:
            width, height = transform.size_for(*source.load(i).image.size)
        except Exception:  # counted and logged when the batch that would hold it is read
            return 0
        return (width // transform.patch) * (height // transform.patch)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(length, range(len(source))))


class TokenBudgetPlan:
    """A training plan (like loader.ShuffledPlan) over records of known patch counts."""

    def __init__(self, lengths: list[int], max_tokens: int, buckets: int, max_length: int, seed: int,
                 rank: int = 0, world: int = 1):
        self.lengths, self.max_tokens, self.buckets, self.max_length = lengths, max_tokens, buckets, max_length
        self.seed, self.rank, self.world = seed, rank, world
        first = pack_by_tokens(lengths, max_tokens, buckets, max_length, multiple=world)
        if not first:
            raise UserError(f"{len(lengths)} records fill no batch of {max_tokens} tokens")
        self.steps_per_epoch = len(first)  # the same every epoch: bucket sizes do not depend on the order
        self._epoch, self._batches = -1, first

    def batch(self, step: int) -> list[int]:
        """The whole (global) batch of a step."""
        epoch, j = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            order = torch.randperm(len(self.lengths), generator=g).tolist()
            batches = pack_by_tokens(self.lengths, self.max_tokens, self.buckets, self.max_length, order, self.world)
            shuffle = torch.randperm(len(batches), generator=g).tolist()
            self._epoch, self._batches = epoch, [batches[k] for k in shuffle]
        return self._batches[j]

    def indices(self, step: int) -> list[int]:
        """This rank's contiguous share of the step's batch."""
        batch = self.batch(step)
        local = len(batch) // self.world
        return batch[self.rank * local : (self.rank + 1) * local]
