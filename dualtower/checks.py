"""The checks every config runs on its fields (a config read from a file is refused before anything is built from
it), each failure a UserError naming the field and the value."""

from __future__ import annotations

import math

from .errors import UserError


def ints(where: str, cfg, **bounds: tuple[int, int]) -> None:
    """Each named field an int (not a bool) within [lo, hi]: a config from a file is refused before a model of
    absurd size is built from it."""
    for key, (lo, hi) in bounds.items():
        v = getattr(cfg, key)
        check(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi,
               f"{where} {key} {v!r} is not an integer in [{lo}, {hi}]")


def finite(where: str, cfg, **bounds: tuple[float, float]) -> None:
    for key, (lo, hi) in bounds.items():
        v = getattr(cfg, key)
        check(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi,
               f"{where} {key} {v!r} is not a finite number in [{lo}, {hi}]")


def check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)
