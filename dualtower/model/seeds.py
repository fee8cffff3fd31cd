"""Every seed a training run derives from its one `train.seed`, in one place.

Each is a pure function of the run seed and coordinates that do not change on resume or with the number of
loader workers, so a resumed run draws exactly what the uninterrupted one would have:

    process_seed(seed, rank)           torch's global generator in each process (randomness not keyed per sample)
    epoch_seed(seed, epoch)            the permutation of the records in an epoch
    augment_seed(seed, step, index)    the random crop of record `index` at `step`
    noise_keys(seed, step, indices)    per-sample keys for dropout, drop path and patch dropout (see `noise`)
"""

from __future__ import annotations

import torch

_PRIME = 1_000_003


def process_seed(seed: int, rank: int) -> int:
    return seed * 7919 + rank


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * _PRIME + epoch


def augment_seed(seed: int, step: int, index: int) -> int:
    return (seed * _PRIME + step) * _PRIME + index


def noise_keys(seed: int, step: int, indices: list[int]) -> torch.Tensor:
    """(B,) int64: 11 bits of the seed, 20 of the step, 32 of the record index."""
    return (seed & 0x7FF) << 52 | step << 32 | torch.tensor(indices, dtype=torch.int64)
