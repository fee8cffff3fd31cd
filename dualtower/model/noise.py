"""Training noise keyed by sample, so that dropout and patch dropout do not depend on how a batch is split.

In training, the loop gives every sample of a step a key (from the run seed, the step and the sample's position
in the global batch) through `sample_keys(...)`. Each noisy module draws its noise from a counter-based hash of
(sample key, module salt, element index): the same sample gets the same masks whether it is encoded in one
batch or in micro-batches, in any order, on any process, on resume. Without keys (a user's own loop), the
modules fall back to torch's global generator.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
from torch import nn

from ..errors import UserError

_KEYS: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("dualtower_sample_keys", default=None)
_MASK = 0x7FFFFFFF  # 31 bits: products of two such values stay inside int64


@contextlib.contextmanager
def sample_keys(keys: torch.Tensor):
    """Noise for the samples of the enclosed forward passes is keyed by `keys` (B,) int64, one per sample."""
    token = _KEYS.set(keys)
    try:
        yield
    finally:
        _KEYS.reset(token)


def _mix(x: torch.Tensor) -> torch.Tensor:
    for multiplier, shift in ((0x2C1B3C6D, 12), (0x297A2D39, 15), (0x3C6EF372, 13)):
        x = (x ^ (x >> shift)) * multiplier & _MASK
    return x ^ (x >> 16)


def checkpoint(fn, *args):
    """`fn(*args)` under activation checkpointing, its recompute in backward (outside the caller's `sample_keys`)
    drawing the same keyed noise as the forward did; without keys, torch's generator state is replayed."""
    import torch.utils.checkpoint

    keys = _KEYS.get()

    def run(*inputs):
        token = _KEYS.set(keys)
        try:
            return fn(*inputs)
        finally:
            _KEYS.reset(token)

    return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False)


def uniform(shape: tuple[int, ...], salt: int, device: torch.device) -> torch.Tensor:
    """(B, *shape) uniform in [0, 1): row i from the key of sample i, or from torch's generator without keys."""
    keys = _KEYS.get()
    if keys is None:
        return torch.rand(shape, device=device)
    if keys.shape[0] != shape[0]:
        raise UserError(f"{keys.shape[0]} sample keys for a batch of {shape[0]}")
    per_sample = int(torch.tensor(shape[1:]).prod()) if len(shape) > 1 else 1
    index = torch.arange(per_sample, device=device, dtype=torch.int64)
    keys = keys.to(device=device, dtype=torch.int64)
    seed = _mix((keys & _MASK) ^ (salt * 0x9E3779B1 & _MASK))
    seed = _mix(seed ^ ((keys >> 31) & _MASK))  # (B,): all 62 low bits of the key count
    x = _mix((seed[:, None] * 0x5851F42D + index[None, :] * 0x14057B7E + 1) & _MASK)  # (B, per_sample)
    return (x.to(torch.float32) / 2**31).view(shape)


class KeyedDropout(nn.Module):
    """Dropout whose mask for each sample comes from that sample's key (see module doc)."""

    WHAT = "dropout"

    def __init__(self, prob: float, salt: int):
        super().__init__()
        if not 0.0 <= prob < 1.0:
            raise UserError(f"{self.WHAT} {prob} is not in [0, 1)")
        self.prob, self.salt = prob, salt

    def mask_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        return tuple(x.shape)  # one draw per element

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.prob == 0.0:
            return x
        shape = self.mask_shape(x)
        keep = uniform(shape, self.salt, x.device) >= self.prob
        return x * keep.to(x.dtype).view(*shape, *([1] * (x.ndim - len(shape)))) / (1 - self.prob)


class KeyedDropPath(KeyedDropout):
    """Stochastic depth (Huang et al. 2016): drop a sample's whole residual branch, keyed like KeyedDropout."""

    WHAT = "drop path"

    def mask_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        return (x.shape[0],)  # one draw per sample
