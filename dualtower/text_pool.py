"""The position each text row is pooled at: one rule for the PyTorch tower, its exported graph and the ONNX
runtime. The operations used exist alike on torch tensors and numpy arrays, so all three call this."""

from __future__ import annotations

from .config import TextConfig
from .errors import UserError


def pool_positions(ids, cfg: TextConfig, check: bool = True):
    """(B,) positions of ids (B, L): each row's first end-of-text token ("eot"; a row without one is an error),
    the last position ("last"), the first position of its largest id ("argmax"), or 0 ("first").
    `check=False` (inside an exported graph, which cannot raise) leaves the checks to the caller."""
    if check:
        if ids.ndim != 2:
            raise UserError(f"token ids must be (B, L), got {tuple(ids.shape)}")
        if ids.shape[1] > cfg.context_length:
            raise UserError(f"token ids have length {ids.shape[1]}, the context length is {cfg.context_length}")
    if cfg.pool == "last":
        return ids[:, 0] * 0 + (ids.shape[1] - 1)
    if cfg.pool == "first":
        return ids[:, 0] * 0
    if cfg.pool == "argmax":
        return ids.argmax(axis=1)
    is_eot = ids == cfg.eot_id
    if check:
        found = is_eot.any(axis=1).tolist()
        missing = [row for row, ok in enumerate(found) if not ok]
        if missing:
            raise UserError(f"text rows {missing} have no end-of-text token (id {cfg.eot_id})")
    return (is_eot * 1).argmax(axis=1)  # argmax returns the first maximum (torch and numpy alike)
