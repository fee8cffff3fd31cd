"""A NaFlex tower's learned position grid resampled to an image's patch grid (SigLIP 2's rule: bilinear with
antialiasing, align_corners=False), as matrices: per grid for the eager tower (`antialiased_bilinear`), and per
token for a whole batch of grids at once in an exported graph (`grid_positions`)."""

from __future__ import annotations

import torch


def antialiased_bilinear(out_size, in_size: int, like: torch.Tensor) -> torch.Tensor:
    """(out, in) fp32 weights of a 1-D bilinear resize with antialiasing, align_corners=False: the kernel of
    `F.interpolate(mode="bilinear", antialias=True)` (Pillow's), a triangle stretched by the scale when
    shrinking, each row normalised."""
    scale = in_size / out_size
    support = max(scale, 1.0)
    center = (torch.arange(out_size, dtype=torch.float32, device=like.device) + 0.5) * scale - 0.5  # (out,)
    source = torch.arange(in_size, dtype=torch.float32, device=like.device)
    weights = (1 - (source[None, :] - center[:, None]).abs() / support).clamp(min=0)  # (out, in)
    return weights / weights.sum(dim=1, keepdim=True)


def grid_positions(table: torch.Tensor, g: int, shapes: torch.Tensor, length: int) -> torch.Tensor:
    """(B, length, D): the learned g x g positions `table` (g * g, D) resampled to each image's grid `shapes`
    (B, 2) with `antialiased_bilinear`'s kernel, for the row-major tokens of that grid; tokens past the grid
    (padding) take its last row's positions, finite and masked anyway. One product for the whole batch, with no
    step that depends on the values: what an exported graph with a dynamic patch count needs."""
    n = torch.arange(length, device=table.device)[None, :]  # (1, N)
    rows_out, cols_out = shapes[:, :1], shapes[:, 1:]  # (B, 1) each
    row = torch.minimum(torch.div(n, cols_out, rounding_mode="floor"), rows_out - 1)  # (B, N)
    col = n - torch.div(n, cols_out, rounding_mode="floor") * cols_out
    weights_r, weights_c = _triangle(row, rows_out, g), _triangle(col, cols_out, g)  # (B, N, g) each
    outer = (weights_r[..., :, None] * weights_c[..., None, :]).flatten(2)  # (B, N, g * g)
    return outer @ table.float()


def _triangle(index: torch.Tensor, size: torch.Tensor, g: int) -> torch.Tensor:
    """(B, N, g): row `index` of `antialiased_bilinear(size, g)` for each token, sizes per image."""
    scale = g / size.float()  # (B, 1)
    support = scale.clamp(min=1.0)
    center = (index.float() + 0.5) * scale - 0.5  # (B, N)
    source = torch.arange(g, dtype=torch.float32, device=index.device)
    weights = (1 - (source - center[..., None]).abs() / support[..., None]).clamp(min=0)
    return weights / weights.sum(dim=-1, keepdim=True)
