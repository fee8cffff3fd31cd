"""Queries made of examples: more like these, less like those (Qdrant's recommend, Weaviate's weighted vectors).

An example is a text, an image, a stored item (by id) or an embedding, with a weight (1 unless given). The query
is the weighted sum of the positive examples' unit vectors minus the weighted sum of the negative examples' unit
vectors; a text and an image together (a photo, "but at night") is one such sum. Stored items given as examples
are left out of the answer (asking for more like an image does not return that image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import UserError

KINDS = ("text", "image", "id", "embedding")
MAX_EXAMPLES = 64


@dataclass(frozen=True)
class Example:
    kind: str  # one of KINDS
    value: object  # the text, a PIL image, the item id, or a sequence of numbers
    weight: float = 1.0


def example(item, where: str) -> Example:
    """An Example from an Example, or a dict with one of KINDS and an optional weight (a positive number)."""
    if isinstance(item, Example):
        checked = item
    else:
        if not isinstance(item, dict):
            raise UserError(f"{where}: each example is an object with one of {', '.join(KINDS)} (and a weight), "
                            f"got {type(item).__name__}")
        given = [k for k in KINDS if item.get(k) is not None]
        unknown = sorted(set(item) - {*KINDS, "weight"})
        if len(given) != 1 or unknown:
            raise UserError(f"{where}: an example has exactly one of {', '.join(KINDS)} and may have a weight"
                            + (f"; unknown {unknown[:3]}" if unknown else ""))
        checked = Example(given[0], item[given[0]], item.get("weight", 1.0))
    w = checked.weight
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or not 0 < w <= 1000:
        raise UserError(f"{where}: weight must be a number above 0 and at most 1000, got {w!r}")
    return checked


def examples(items, where: str) -> list[Example]:
    if items is None:
        return []
    items = list(items)
    if len(items) > MAX_EXAMPLES:
        raise UserError(f"{where}: {len(items)} examples, over the {MAX_EXAMPLES} allowed")
    return [example(item, f"{where}[{i}]") for i, item in enumerate(items)]


def combine(index, positive, negative=()) -> tuple[np.ndarray, set[int]]:
    """(the query vector, the ids of stored items given as examples) for `index` (a SearchIndex)."""
    pos, neg = examples(positive, "positive"), examples(negative, "negative")
    if not pos:
        raise UserError("positive: give at least one example to search like (a text, an image, an id or an "
                        "embedding)")
    vectors = _vectors(index, pos + neg)
    weights = np.array([e.weight for e in pos] + [-e.weight for e in neg], dtype=np.float32)
    query = weights @ vectors
    if not np.isfinite(query).all() or np.linalg.norm(query) < 1e-6:
        raise UserError("the examples cancel out (the negative ones equal the positive ones): nothing to search for")
    return query, {int(e.value) for e in pos + neg if e.kind == "id"}


def _vectors(index, items: list[Example]) -> np.ndarray:
    """(N, D) unit vectors of the examples, texts embedded in one batch."""
    out = np.zeros((len(items), index.store.dim), dtype=np.float32)
    texts = [(i, e.value) for i, e in enumerate(items) if e.kind == "text"]
    for i, e in enumerate(items):
        if e.kind == "text" and (not isinstance(e.value, str) or not e.value.strip()):
            raise UserError(f"example {i}: text must be a non-empty string")
    if texts:
        out[[i for i, _ in texts]] = index.embed_texts([t for _, t in texts])
    for i, e in enumerate(items):
        if e.kind == "image":
            out[i] = index.embed_image(e.value)
        elif e.kind == "id":
            if isinstance(e.value, bool) or not isinstance(e.value, (int, np.integer)):
                raise UserError(f"example {i}: id must be an integer")
            out[i] = index.item_vector(int(e.value))
        elif e.kind == "embedding":
            v = np.asarray(e.value, dtype=np.float32).reshape(-1)
            if v.shape != (index.store.dim,) or not np.isfinite(v).all() or not v.any():
                raise UserError(f"example {i}: an embedding of {index.store.dim} finite numbers, not all zero, is "
                                "needed")
            out[i] = v
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)
