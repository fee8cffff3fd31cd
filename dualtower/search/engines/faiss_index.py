"""The FAISS engine: nearest-neighbour search over an index's vectors in the index folder.

Two structures, chosen by size (`choose`) or by name:

    flat   exact inner product over every vector (FAISS IndexFlatIP); the default up to `FLAT_LIMIT` vectors
    ivf    an inverted file of product-quantised codes (IVF + PQ, 64 bytes a vector at width 512): a query visits
           the `nprobe` nearest cells, takes `rerank` x k candidates (at least `min_candidates`) by their codes,
           and re-ranks them exactly against the float16 vectors. Codes alone lose recall on text-to-image
           queries, whose nearest images are not much nearer than the rest; the exact re-rank recovers it (at a
           million vectors, recall@10 0.75 with 100 candidates, 1.0 with 1,000: benchmarks/RESULTS.md).

FAISS ids are vector rows; the caller maps rows to item ids. Vectors are L2-normalised, so inner product is
cosine similarity.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import numpy as np

from ... import io
from ...errors import require
from .base import KINDS, choose, rerank

ENGINE_FILE = "engine.faiss"
ENGINE_META = "engine.json"
log = logging.getLogger("dualtower.search")


def _faiss():
    return require("faiss", "search", "search")


class Engine:
    """A FAISS index over (rows, vectors), with the exact re-rank for compressed codes."""

    def __init__(self, kind: str, index, vectors: np.ndarray, nprobe: int = 32, rerank: int = 30,
                 min_candidates: int = 1000):
        self.kind, self.index, self.vectors = kind, index, vectors
        self.nprobe, self.rerank, self.min_candidates = nprobe, rerank, min_candidates
        if kind == "ivf":
            self._ivf().nprobe = nprobe

    def _ivf(self):
        faiss = _faiss()
        return faiss.extract_index_ivf(self.index)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(cls, kind: str, rows: np.ndarray, vectors: np.ndarray, seed: int = 0) -> "Engine":
        """`rows`: the live rows of `vectors` (float16 (R, D), memory-mapped) to put in the structure."""
        faiss = _faiss()
        dim = vectors.shape[1]
        kind = choose(kind, len(rows))
        if kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
            for lo in range(0, len(rows), 65536):
                part = rows[lo: lo + 65536]
                index.add_with_ids(np.asarray(vectors[part], dtype=np.float32), part.astype(np.int64))
            return cls(kind, index, vectors)
        n = len(rows)
        nlist = max(1, min(int(math.sqrt(n)), n // 39))  # FAISS wants >= 39 training points per cell
        m = next(m for m in (dim // 8, dim // 4, dim // 2, dim) if dim % m == 0 and m > 0)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, size=min(n, max(256 * nlist // 4, 50_000), 200_000), replace=False))
        index.train(np.asarray(vectors[rows[sample]], dtype=np.float32))
        for lo in range(0, n, 65536):
            part = rows[lo: lo + 65536]
            index.add_with_ids(np.asarray(vectors[part], dtype=np.float32), part.astype(np.int64))
        return cls(kind, index, vectors)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (Q, k'), best first; k' = min(k, vectors); -1 rows pad short results. `allowed`:
        the only rows searched, through FAISS's id selector (a bitmap over the rows)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, self.ntotal if allowed is None else len(allowed))
        if k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        faiss = _faiss()
        params, bitmap = None, None
        if allowed is not None:
            bits = np.zeros(len(self.vectors), dtype=bool)
            bits[allowed] = True
            bitmap = np.packbits(bits, bitorder="little")  # kept alive for the search
            selector = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bitmap))
            params = faiss.SearchParameters(sel=selector) if self.kind == "flat" else \
                faiss.SearchParametersIVF(sel=selector, nprobe=self.nprobe)
        if self.kind == "flat":
            return self.index.search(q, k, params=params)
        wide = min(self.ntotal, max(k * self.rerank, self.min_candidates))
        _, candidates = self.index.search(q, wide, params=params)
        del bitmap
        return rerank(self.vectors, q, candidates, k)

    def save(self, directory: Path, store) -> None:
        """engine.faiss, and engine.json tying it to `store`'s identity and generation with its digest."""
        faiss = _faiss()
        data = faiss.serialize_index(self.index).tobytes()
        with io.atomic_file(directory / ENGINE_FILE) as tmp:
            tmp.write_bytes(data)
        io.write_json(directory / ENGINE_META, {"kind": self.kind, "generation": store.generation,
                                                "store_id": store.store_id, "ntotal": self.ntotal,
                                                "sha256": hashlib.sha256(data).hexdigest()})

    @classmethod
    def load(cls, directory: Path, store, vectors: np.ndarray) -> "Engine | None":
        """The saved engine, or None when there is none, it was built from other rows (stale), or it is not the
        file its engine.json describes: another index's, damaged or replaced (logged; the caller rebuilds it
        from the vectors)."""
        faiss = _faiss()
        meta_path, path = directory / ENGINE_META, directory / ENGINE_FILE
        if not meta_path.is_file() or not path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            log.warning("%s: unreadable; the engine is rebuilt from the vectors", meta_path)
            return None
        if not isinstance(meta, dict) or meta.get("generation") != store.generation:
            return None
        data = np.fromfile(path, dtype=np.uint8)
        if "sha256" not in meta:
            log.info("%s: saved by an older dualtower; rebuilt in memory (`dualtower index` again saves it)", path)
            return None
        if meta.get("store_id") != store.store_id or meta.get("sha256") != hashlib.sha256(data).hexdigest():
            log.warning("%s: not the engine this index saved (another index's, damaged or replaced); rebuilt from "
                        "the vectors", path)
            return None
        try:
            index = faiss.deserialize_index(data)
        except Exception as e:  # FAISS raises RuntimeError on a file it cannot read
            log.warning("%s: unreadable (%s); rebuilt from the vectors", path, str(e).splitlines()[0][:100])
            return None
        if index.ntotal != store.count() or index.d != vectors.shape[1] or meta.get("kind") not in KINDS:
            log.warning("%s: holds %d vectors of width %d, the index %d of width %d; rebuilt from the vectors", path,
                        index.ntotal, index.d, store.count(), vectors.shape[1])
            return None
        return cls(meta["kind"], index, vectors)
