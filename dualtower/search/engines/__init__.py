"""Search engines: one protocol (`base.SearchEngine`, with the shared exact re-rank), one module per engine
(`faiss_index`: FAISS flat and IVF-PQ in the index folder; `milvus`: a Milvus collection), and `ready` above them.

    flat   exact inner product over every vector (FAISS IndexFlatIP); the default up to `FLAT_LIMIT` vectors
    ivf    IVF-PQ codes whose candidates are re-ranked exactly against the float16 vectors
    milvus a Milvus Lite file or server, its candidates re-ranked the same way

Engine rows are vector rows; the caller maps rows to item ids. Vectors are L2-normalised, so inner product is
cosine similarity.
"""

from __future__ import annotations

from .base import FLAT_LIMIT, KINDS, SearchEngine, choose, rerank, scan


def ready(store, kind: str | None = None, save: bool = False):
    """The engine for `store`'s current rows: the saved one when it is fresh (and of `kind`, when one is named),
    else one built now (and saved with `save`). A Milvus-backed index syncs its collection instead."""
    if store.backend.get("name") == "milvus":
        from .milvus import MilvusEngine

        return MilvusEngine.sync(store)
    from .faiss_index import Engine

    vectors = store.vectors()
    built = Engine.load(store.path, store, vectors)
    wanted = choose(kind or "auto", store.count())
    if built is not None and (kind is None or built.kind == wanted):
        return built
    rows, _ = store.live_rows()
    built = Engine.build(wanted, rows, vectors)
    if save:
        built.save(store.path, store)
    return built


__all__ = ["FLAT_LIMIT", "KINDS", "SearchEngine", "choose", "ready", "rerank", "scan"]
