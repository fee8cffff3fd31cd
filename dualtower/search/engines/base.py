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

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (Q, k'), best first; k' = min(k, vectors); -1 rows pad short results. `allowed`:
        the sorted rows a filter leaves, the only ones searched (inside the engine: never a wider search cut
        down afterwards)."""


def choose(kind: str, n: int) -> str:
    if kind not in KINDS:
        raise UserError(f"engine {kind!r} is not one of {KINDS}")
    if kind != "auto":
        return kind
    return "flat" if n <= FLAT_LIMIT else "ivf"


def scan(vectors: np.ndarray, queries: np.ndarray, rows: np.ndarray, k: int,
          chunk: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows), each (Q, k): every one of `rows` (sorted) scored exactly against every query, best first
    (ties in row order); -1 rows pad short results. The pre-filter path: a filter leaving few rows is answered by
    reading just those."""
    q = len(queries)
    best_scores = np.full((q, 0), -np.inf, dtype=np.float32)
    best_rows = np.zeros((q, 0), dtype=np.int64)
    for lo in range(0, len(rows), chunk):
        part = rows[lo: lo + chunk]
        exact = queries @ np.asarray(vectors[part], dtype=np.float32).T  # (Q, n)
        scores = np.concatenate([best_scores, exact], axis=1)
        found = np.concatenate([best_rows, np.broadcast_to(part, (q, len(part)))], axis=1)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_scores, best_rows = np.take_along_axis(scores, top, 1), np.take_along_axis(found, top, 1)
    pad = k - best_scores.shape[1]
    if pad > 0:
        best_scores = np.pad(best_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        best_rows = np.pad(best_rows, ((0, 0), (0, pad)), constant_values=-1)
    return best_scores.astype(np.float32), best_rows


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
