"""What every search engine shares: the protocol, the choice of structure by size, and the exact re-rank of
candidates against the index's float16 vectors (so every engine's scores are the same numbers)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ...errors import UserError

FLAT_LIMIT = 100_000
KINDS = ("auto", "flat", "ivf")


class SearchEngine(Protocol):
    """The vectors of one index generation, searchable: FAISS in the index folder, or a Milvus collection."""

    kind: str  # "flat", "ivf" or "milvus"
    vectors: np.ndarray  # the index's float16 (R, D) vectors, by row (memory-mapped)

    @property
    def ntotal(self) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (Q, k'), best first; k' = min(k, vectors); -1 rows pad short results."""


def choose(kind: str, n: int) -> str:
    if kind not in KINDS:
        raise UserError(f"engine {kind!r} is not one of {KINDS}")
    if kind != "auto":
        return kind
    return "flat" if n <= FLAT_LIMIT else "ivf"


def rerank(vectors: np.ndarray, queries: np.ndarray, candidates, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows), each (Q, k): each query's candidate rows (-1 ignored) scored exactly against the float16
    `vectors`, best first; -1 rows pad short results."""
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    rows = np.full((len(queries), k), -1, dtype=np.int64)
    for i, cand in enumerate(candidates):
        cand = np.sort(np.asarray(cand, dtype=np.int64))
        cand = cand[cand >= 0]  # sorted: memory-mapped rows are read in file order
        exact = np.asarray(vectors[cand], dtype=np.float32) @ queries[i]
        top = np.argsort(-exact, kind="stable")[:k]
        scores[i, : len(top)], rows[i, : len(top)] = exact[top], cand[top]
    return scores, rows
