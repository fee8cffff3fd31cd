"""Vectors in a Milvus collection instead of FAISS: Milvus Lite (a local `.db` file, embedded) or a Milvus server
(`http://host:19530`), through pymilvus. The index directory stays the source of truth (SQLite and the float16
vectors); the collection mirrors its live rows (primary key: the vector row) and is brought up to date by a diff
whenever the index is built or opened, so a killed update heals the same way the rest of the index does.
Candidates from Milvus are re-ranked exactly against the float16 vectors, so scores equal the FAISS engines'.
"""

from __future__ import annotations

import numpy as np

from ...errors import require
from .base import rerank

CHUNK = 5000
MAX_TOPK = 16384  # Milvus' limit on one search's results


class MilvusEngine:
    kind = "milvus"

    def __init__(self, client, collection: str, vectors: np.ndarray, live: np.ndarray, rerank: int = 4):
        self.client, self.collection, self.vectors = client, collection, vectors
        self.live, self.rerank = live, rerank  # the sorted rows the collection holds

    @property
    def ntotal(self) -> int:
        return len(self.live)

    @classmethod
    def sync(cls, store) -> "MilvusEngine":
        """Connect, create the collection if needed, and make its ids equal the index's live rows."""
        pymilvus = require("pymilvus", "the Milvus backend", "milvus")
        backend = store.backend
        client = pymilvus.MilvusClient(backend["uri"])
        name = backend["collection"]
        if not client.has_collection(name):
            client.create_collection(name, dimension=store.dim, metric_type="IP", auto_id=False,
                                     id_type="int", consistency_level="Strong")
        present = set()
        iterator = client.query_iterator(name, batch_size=CHUNK, filter="id >= 0", output_fields=["id"])
        while batch := iterator.next():
            present.update(int(r["id"]) for r in batch)
        iterator.close()
        rows, _ = store.live_rows()
        live = set(rows.tolist())
        stale = sorted(present - live)
        for lo in range(0, len(stale), CHUNK):
            client.delete(name, ids=stale[lo: lo + CHUNK])
        vectors = store.vectors()
        missing = np.array(sorted(live - present), dtype=np.int64)
        for lo in range(0, len(missing), CHUNK):
            part = missing[lo: lo + CHUNK]
            data = np.asarray(vectors[part], dtype=np.float32)
            client.insert(name, [{"id": int(r), "vector": v.tolist()} for r, v in zip(part, data)])
        return cls(client, name, vectors, np.array(sorted(live), dtype=np.int64))

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`allowed`: the only rows searched, by a scalar filter on the primary key (the vector row): `id in`
        the allowed rows, or `id not in` the others, whichever list is shorter."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        n = self.ntotal if allowed is None else len(allowed)
        k = min(k, n)
        if k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        expression = ""
        if allowed is not None:
            others = np.setdiff1d(self.live, allowed, assume_unique=True)
            expression = (f"id in [{','.join(map(str, allowed.tolist()))}]" if len(allowed) <= len(others) else
                          f"id not in [{','.join(map(str, others.tolist()))}]")
        wide = min(n, max(k * self.rerank, 100), MAX_TOPK)
        answers = self.client.search(self.collection, data=q.tolist(), limit=wide, filter=expression,
                                     search_params={"metric_type": "IP"})
        return rerank(self.vectors, q, [[int(h["id"]) for h in hits] for hits in answers], k)
