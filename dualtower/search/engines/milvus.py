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

    def __init__(self, client, collection: str, vectors: np.ndarray, ntotal: int, rerank: int = 4):
        self.client, self.collection, self.vectors = client, collection, vectors
        self._ntotal, self.rerank = ntotal, rerank

    @property
    def ntotal(self) -> int:
        return self._ntotal

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
        return cls(client, name, vectors, len(live))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, self.ntotal)
        if k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        wide = min(self.ntotal, max(k * self.rerank, 100), MAX_TOPK)
        answers = self.client.search(self.collection, data=q.tolist(), limit=wide, search_params={"metric_type": "IP"})
        return rerank(self.vectors, q, [[int(h["id"]) for h in hits] for hits in answers], k)
