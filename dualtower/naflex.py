"""Native-resolution image input (SigLIP 2's NaFlex): each image keeps its own aspect ratio.

An image is resized so that its patch grid (h, w) holds at most `max_patches` patches, cut into patches of
`patch x patch x 3` values (row-major over the grid, each patch row-major over its pixels, channels last, the
layout of transformers' `Siglip2ImageProcessor`), and a batch is padded to a common length. `Patches` carries
the three tensors the processor returns: `pixel_values` (B, N, p*p*3), `pixel_attention_mask` (B, N; 1 for a
patch, 0 for padding, the patches first) and `spatial_shapes` (B, 2). The tower resamples its learned position
grid to each image's (h, w) and masks the padding out of attention and pooling.

Torch is imported only where tensors are made, so the image side stays usable without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from .errors import UserError

if TYPE_CHECKING:
    import torch

HF_KEYS = ("pixel_values", "pixel_attention_mask", "spatial_shapes")

# The search for the largest scale: bisection on [1e-6, 100] down to a width of 1e-5, the definition of the
# size in transformers' processor (and big_vision's). The upper end caps the upscaling of a tiny image at 100x.
_SCALE_LOW, _SCALE_HIGH, _SCALE_EPS = 1e-6, 100.0, 1e-5


def grid_for(height: int, width: int, patch: int, max_patches: int, max_scale: float = _SCALE_HIGH
             ) -> tuple[int, int]:
    """The patch grid (rows, columns) an image of height x width pixels is resized to: the largest scale whose
    grid, each side rounded up to whole patches and at least one, holds at most `max_patches` patches.
    `max_scale=1` keeps an image smaller than the budget at its own size (native resolution, for training)."""
    if height < 1 or width < 1:
        raise UserError(f"an image of {width}x{height} pixels has no area")
    if max_patches < 1:
        raise UserError(f"max_patches must be at least 1, got {max_patches}")

    def sides(scale: float) -> tuple[int, int]:
        return max(1, math.ceil(height * scale / patch)), max(1, math.ceil(width * scale / patch))

    low, high = _SCALE_LOW, max_scale
    while high - low >= _SCALE_EPS:
        mid = (low + high) / 2
        rows, cols = sides(mid)
        if rows * cols <= max_patches:
            low = mid
        else:
            high = mid
    return sides(low)


def patchify(pixels: np.ndarray, patch: int) -> np.ndarray:
    """(C, H, W) -> (H/p * W/p, p * p * C): patches row-major over the grid, each (p, p, C) flattened."""
    c, h, w = pixels.shape
    grid = pixels.reshape(c, h // patch, patch, w // patch, patch)
    return grid.transpose(1, 3, 2, 4, 0).reshape((h // patch) * (w // patch), patch * patch * c)


def collate_arrays(items: Sequence[tuple[np.ndarray, tuple[int, int]]], patch: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`Patches.collate` in numpy, for a runtime without torch: values (B, N, p*p*3) float32 padded with zeros to
    the longest image, mask (B, N) int64 (1 for a patch), shapes (B, 2) int64: an exported NaFlex graph's inputs."""
    longest = max((len(p) for p, _ in items), default=0)
    values = np.zeros((len(items), longest, patch * patch * 3), np.float32)
    mask = np.zeros((len(items), longest), np.int64)
    for i, (p, _) in enumerate(items):
        values[i, : len(p)] = p
        mask[i, : len(p)] = 1
    shapes = np.array([list(grid) for _, grid in items], np.int64).reshape(len(items), 2)
    return values, mask, shapes


@dataclass
class Patches:
    """A batch of images as padded patch sequences; see the module docstring for the layout."""

    values: "torch.Tensor"  # (B, N, p * p * 3) float
    mask: "torch.Tensor"  # (B, N) int32, 1 for a patch
    shapes: "torch.Tensor"  # (B, 2) int64, each image's grid (rows, columns)

    def __len__(self) -> int:
        return self.values.shape[0]

    def __getitem__(self, rows) -> "Patches":
        """Some of the images (a slice or index tensor over the batch), e.g. a gradient-cache micro-batch."""
        return Patches(self.values[rows], self.mask[rows], self.shapes[rows])

    def to(self, device=None, dtype=None) -> "Patches":
        return Patches(self.values.to(device=device, dtype=dtype), self.mask.to(device), self.shapes.to(device))

    def as_hf(self) -> dict:
        """The processor's dict, for `Siglip2Model(**patches.as_hf(), ...)`."""
        return dict(zip(HF_KEYS, (self.values, self.mask, self.shapes)))

    @classmethod
    def from_hf(cls, batch: Mapping) -> "Patches":
        """From transformers' processor output (a BatchFeature or dict holding the three tensors)."""
        import torch

        missing = [k for k in HF_KEYS if k not in batch]
        if missing:
            raise UserError(f"a NaFlex image batch needs {', '.join(HF_KEYS)}; missing {', '.join(missing)}")
        values, mask, shapes = (torch.as_tensor(batch[k]) for k in HF_KEYS)
        return cls(values, mask, shapes)

    @classmethod
    def collate(cls, items: Sequence[tuple[np.ndarray, tuple[int, int]]], length: int | None = None) -> "Patches":
        """One batch from per-image (patches (n, p*p*3), grid) pairs, padded with zeros to `length` (default:
        the longest image's; the tower's output does not depend on the padding)."""
        import torch

        if not items:
            raise UserError("a batch needs at least one image (Patches.empty makes an empty one)")
        longest = max(len(p) for p, _ in items)
        length = longest if length is None else length
        if length < longest:
            raise UserError(f"an image has {longest} patches, more than the padded length {length}")
        # Allocated by torch (64-byte aligned), not by numpy: matrix products can round differently on memory of
        # another alignment, and a resumed run must compute what the uninterrupted one did, bit for bit.
        values = torch.zeros(len(items), length, items[0][0].shape[1])
        mask = torch.zeros(len(items), length, dtype=torch.int32)
        for i, (p, _) in enumerate(items):
            values[i, : len(p)] = torch.from_numpy(np.ascontiguousarray(p, dtype=np.float32))
            mask[i, : len(p)] = 1
        shapes = torch.tensor([list(grid) for _, grid in items], dtype=torch.long).reshape(len(items), 2)
        return cls(values, mask, shapes)

    @classmethod
    def empty(cls, patch: int) -> "Patches":
        """A batch of no images (every record of a step was unreadable)."""
        import torch

        return cls(torch.zeros(0, 0, patch * patch * 3), torch.zeros(0, 0, dtype=torch.int32),
                   torch.zeros(0, 2, dtype=torch.long))

    def check(self, patch: int) -> None:
        """Refuses a batch whose three tensors disagree (shapes, a mask that is not each grid's patches first)."""
        import torch

        v, m, s = self.values, self.mask, self.shapes
        if v.ndim != 3 or v.shape[2] != patch * patch * 3:
            raise UserError(f"pixel_values must be (B, N, {patch * patch * 3}) for {patch}-pixel patches, "
                             f"got {tuple(v.shape)}")
        if tuple(m.shape) != tuple(v.shape[:2]) or tuple(s.shape) != (v.shape[0], 2):
            raise UserError(f"pixel_attention_mask {tuple(m.shape)} and spatial_shapes {tuple(s.shape)} do not "
                             f"match pixel_values {tuple(v.shape)}")
        counts = s[:, 0] * s[:, 1]
        expected = torch.arange(m.shape[1], device=m.device)[None, :] < counts[:, None].to(m.device)
        bad = ((s <= 0).any(dim=1) | (counts > m.shape[1]) | (expected != m.bool()).any(dim=1).to(s.device))
        if bad.any():
            rows = bad.nonzero().flatten().tolist()
            raise UserError(f"images {rows[:8]}: spatial_shapes and pixel_attention_mask disagree (each image's "
                             "rows x columns patches must come first, marked 1, then padding marked 0)")
