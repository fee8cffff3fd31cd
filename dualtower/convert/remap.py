"""The shared remapping code: a key table per foreign format, applied in either direction.

A table is a list of `Rule`s over our parameter names. `{i}` stands for a block index. A rule whose `ours`
keys our model does not have (a bias that is off, layer scale, logit bias) does not apply. Import: every key
of the foreign state dict must be consumed by a rule or declared dropped, and every key of ours produced;
otherwise the error names the keys. Export is the same table read backwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError


class ConversionError(UserError):
    """A state dict does not match the key table of its format; the message names the keys."""


@dataclass(frozen=True)
class Rule:
    ours: str
    theirs: tuple[str, ...]  # one key for a copy, several for a fused tensor (split along dim 0 on export)
    transpose: bool = False  # theirs is stored as (in, out), ours as nn.Linear's (out, in)
    lead: int = 0  # theirs has this many leading dimensions of size 1 that ours has not ((1, 1, D) vs (D,))
    parts: tuple[int, ...] = ()  # relative sizes of the fused pieces along dim 0; () = equal


def rule(ours: str, *theirs: str, transpose: bool = False, lead: int = 0, parts: tuple[int, ...] = ()) -> Rule:
    return Rule(ours, tuple(theirs), transpose, lead, parts)


def expand(table: list[Rule], depths: dict[str, int]) -> list[Rule]:
    """Rules with `{i}` expanded for every block; `depths` maps our key prefix ("visual.", "text.") to a depth."""
    out = []
    for r in table:
        if "{i}" not in r.ours:
            out.append(r)
            continue
        depth = next(d for prefix, d in depths.items() if r.ours.startswith(prefix))
        for i in range(depth):
            out.append(Rule(r.ours.format(i=i), tuple(t.format(i=i) for t in r.theirs), r.transpose, r.lead,
                            r.parts))
    return out


def to_ours(theirs: dict[str, torch.Tensor], rules: list[Rule], our_keys: set[str], dropped: set[str],
            source: str) -> dict[str, torch.Tensor]:
    rules = [r for r in rules if r.ours in our_keys]
    missing = sorted({k for r in rules for k in r.theirs if k not in theirs})
    if missing:
        raise ConversionError(f"{source}: missing keys {_few(missing)}")
    used = {k for r in rules for k in r.theirs}
    unmatched = sorted(k for k in theirs if k not in used and k not in dropped)
    if unmatched:
        raise ConversionError(f"{source}: keys that match nothing in this architecture: {_few(unmatched)}")
    out = {}
    for r in rules:
        parts = [theirs[k] for k in r.theirs]
        tensor = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
        if r.lead:
            if tuple(tensor.shape[: r.lead]) != (1,) * r.lead:
                raise ConversionError(f"{source}: {r.theirs[0]} has shape {tuple(tensor.shape)}, expected "
                                      f"{r.lead} leading dimensions of size 1")
            tensor = tensor.reshape(tensor.shape[r.lead:])
        out[r.ours] = tensor.T.contiguous() if r.transpose else tensor
    not_made = sorted(our_keys - set(out))
    if not_made:
        raise ConversionError(f"{source}: the {len(not_made)} parameters {_few(not_made)} have no rule in the table")
    return out


def from_ours(ours: dict[str, torch.Tensor], rules: list[Rule]) -> dict[str, torch.Tensor]:
    rules = [r for r in rules if r.ours in ours]
    unmatched = sorted(set(ours) - {r.ours for r in rules})
    if unmatched:
        raise ConversionError(f"this format has no place for our parameters {_few(unmatched)}")
    out = {}
    for r in rules:
        tensor = ours[r.ours].T if r.transpose else ours[r.ours]
        tensor = tensor.reshape((1,) * r.lead + tuple(tensor.shape))
        if len(r.theirs) == 1:
            pieces: tuple[torch.Tensor, ...] = (tensor,)
        elif r.parts:
            unit = tensor.shape[0] // sum(r.parts)
            pieces = tensor.split([unit * p for p in r.parts], dim=0)
        else:
            pieces = tensor.chunk(len(r.theirs), dim=0)
        for key, piece in zip(r.theirs, pieces):
            out[key] = piece.contiguous()
    return out


def _few(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
