"""Querying an index by text, by image, by a stored item or by a raw embedding."""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import UnknownName, UserError
from ..runtimes import as_embedder
from . import engines, filters
from .store import SearchIndexError, Store

# A filter leaving at most this many rows is answered by scoring just those rows exactly (pre-filtering); one
# leaving more, by the engine with those rows as its id selector (FAISS) or scalar filter (Milvus). On a flat
# engine scoring the rows costs less until they are about a quarter of the index (FLAT_SCAN_SHARE).
PREFILTER_ROWS = 20_000
FLAT_SCAN_SHARE = 0.25


@dataclass
class Hit:
    id: int
    score: float
    key: str
    path: str | None
    caption: str | None
    width: int
    height: int

    def to_dict(self) -> dict:
        return asdict(self)


class SearchIndex:
    """An index opened for queries. `model`: the index's own model (checked by its weights digest) as an Embedder
    of any runtime (an ONNX Runtime export of it serves too, at any precision) or a DualEncoder; None loads the
    one the index names (with `options`: device, precision). Queries may come from several threads; the
    Embedder runs one batch at a time."""

    def __init__(self, path: "str | os.PathLike", model=None, engine: str | None = None, options=None,
                 runtime: str | None = None):
        self.store = Store(path)
        self.embedder = open_model(self.store, options, runtime) if model is None else as_embedder(model)
        self.store.check_model(self.embedder.identity())
        self._refreshing = threading.Lock()
        self._engine_kind = engine
        self._filtered = filters.RowCache()
        self.refresh(engine)

    @classmethod
    def open(cls, path: "str | os.PathLike", model: str | None = None, runtime: str = "torch",
             options=None) -> "SearchIndex":
        """The index with its model opened on `runtime` (runtimes.open, with `options`: device, precision): the
        model named (it must have the index's weights), or the one the index records (on the runtime it was
        built with, or the fastest for "auto"; for another runtime, name the model)."""
        if runtime not in ("torch", "auto") and not model:
            raise SearchIndexError(f"--runtime {runtime} needs --model: a folder from `dualtower export` of the "
                                   "index's model")
        from .. import runtimes

        return cls(path, None if model is None else runtimes.open(model, runtime, options), options=options,
                   runtime="auto" if runtime == "auto" else None)

    def refresh(self, engine: str | None = None) -> None:
        """Load the saved engine, or build one in memory where it is missing or stale: a view of the index at one
        generation (a writer committing meanwhile is seen as a change of generation, and read again)."""
        store = self.store
        for _ in range(5):
            generation = store.generation
            built = engines.ready(store, engine)
            rows, ids = store.live_rows()
            row_to_id = np.full(store.rows, -1, dtype=np.int64)
            row_to_id[rows] = ids
            if store.generation == generation:
                break
        self._view = (built, row_to_id, generation)  # one assignment: a query reads one consistent view

    def current(self) -> tuple:
        """(engine, row -> id, generation) of the index as it is now: a service follows `dualtower index` runs
        (new items, removed ones, compacted vectors) by reading the store's generation before each query."""
        if self._view[2] != self.store.generation:
            with self._refreshing:  # one thread re-reads; the others wait for its view
                if self._view[2] != self.store.generation:
                    self.refresh(self._engine_kind)
        return self._view

    @property
    def engine(self):
        return self.current()[0]

    @property
    def generation(self) -> int:
        return self._view[2]

    def __len__(self) -> int:
        return self.current()[0].ntotal

    # ------------------------------------------------------------------------------------------ embedding

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """(N, E): several texts together (a service batches the queries that arrive together)."""
        return self.embedder.embed_texts(list(texts))

    def embed_text(self, text: str) -> np.ndarray:
        return self.embed_texts([text])[0]

    def embed_image(self, image) -> np.ndarray:
        return self.embedder.embed_images([image])[0]

    def item_vector(self, item_id: int) -> np.ndarray:
        for _ in range(5):  # the item's row and the vectors of one generation (a compaction moves rows)
            engine, _, generation = self.current()
            item = self.store.item(item_id)
            if self.store.generation == generation:
                break
        if item is None:
            raise UnknownName(f"no item {item_id} in {self.store.path}")
        return np.asarray(engine.vectors[item.row], dtype=np.float32)

    # ------------------------------------------------------------------------------------------- searching

    def search_vectors(self, vectors: np.ndarray, k: int = 10, offset: int = 0,
                       min_score: float | None = None, where=None, exclude=frozenset()) -> list[list[Hit]]:
        """The k nearest items of each row of `vectors` (any scale: each is normalised), in one engine call.
        `offset` skips that many nearer items first: the page after `offset` hits. Pages are stable while the
        index's `generation` is unchanged on a flat engine (exact, ties in id order); on IVF-PQ a deeper page
        draws its candidates afresh, so an item near a page's edge may move. `min_score` keeps only hits of at
        least that cosine similarity, so a page may hold fewer than k (then it is the last). `where`: filter
        conditions, every hit meets them all (filters.py: 'ext=jpg', 'rating>=3', ...). `exclude`: item ids left
        out of the ranking (the examples of a query made of them)."""
        offset, min_score = check_page(offset, min_score)
        conditions = filters.parse(where)
        v = np.asarray(vectors, dtype=np.float32)
        if v.ndim != 2 or v.shape[1] != self.store.dim or not np.isfinite(v).all():
            raise UserError(f"an embedding of {self.store.dim} finite numbers is needed, got "
                             f"{v.shape[-1] if v.ndim else 0}")
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        if (norms == 0).any():
            raise UserError("the embedding is all zeros")
        engine, row_to_id, generation = self.current()
        # the excluded items take at most that many places of the ranking, so it is that much deeper
        scores, rows = self._search(engine, v / norms, k + offset + len(exclude), conditions, (row_to_id, generation))
        low = -np.inf if min_score is None else min_score
        ranked = [[(float(s), int(row_to_id[r])) for s, r in zip(srow, rrow) if r >= 0 and row_to_id[r] not in exclude]
                  for srow, rrow in zip(scores, rows)]
        found = [[(s, i) for s, i in r[offset: offset + k] if s >= low] for r in ranked]
        items = self.store.items(sorted({i for f in found for _, i in f}))
        return [[Hit(i, s, it.key, it.path, it.caption, it.width, it.height)
                 for s, i in f if (it := items.get(i)) is not None] for f in found]

    def _search(self, engine, queries: np.ndarray, k: int, conditions, view: tuple):
        if not conditions:
            return engine.search(queries, k)
        allowed = self._filtered.rows(self.store, conditions, view)  # rows of this view only
        if len(allowed) <= PREFILTER_ROWS or (engine.kind == "flat" and len(allowed) <= engine.ntotal * FLAT_SCAN_SHARE):
            return engines.scan(engine.vectors, queries, allowed, min(k, len(allowed)))
        return engine.search(queries, k, allowed)

    def matching(self, where) -> int:
        """How many items meet the filter `where`."""
        _, row_to_id, generation = self.current()
        return len(self._filtered.rows(self.store, filters.parse(where), (row_to_id, generation)))

    def search_vector(self, vector: np.ndarray, k: int = 10, **page) -> list[Hit]:
        """`page`: offset, min_score, where, as `search_vectors` takes them (so too for the other kinds below)."""
        return self.search_vectors(np.asarray(vector, dtype=np.float32).reshape(1, -1), k, **page)[0]

    def search_texts(self, texts: list[str], k: int = 10, **page) -> list[list[Hit]]:
        return self.search_vectors(self.embed_texts(texts), k, **page)

    def search_text(self, text: str, k: int = 10, **page) -> list[Hit]:
        return self.search_texts([text], k, **page)[0]

    def search_image(self, image, k: int = 10, **page) -> list[Hit]:
        return self.search_vector(self.embed_image(image), k, **page)

    def search_item(self, item_id: int, k: int = 10, **page) -> list[Hit]:
        """More like this: the stored image's own vector as the query."""
        return self.search_vector(self.item_vector(item_id), k, **page)

    def search_examples(self, positive, negative=(), k: int = 10, **page) -> list[Hit]:
        """More like these, less like those: `positive` and `negative` are examples (dicts with one of text,
        image, id, embedding, and an optional weight; examples.py), the query the weighted sum of the positive
        ones' unit vectors minus the negative ones'. Stored items given as examples are not among the hits."""
        from .examples import combine

        vector, ids = combine(self, positive, negative)
        return self.search_vectors(vector.reshape(1, -1), k, exclude=frozenset(ids), **page)[0]

    def close(self) -> None:
        self.store.close()


def check_page(offset, min_score) -> tuple[int, float | None]:
    """offset an integer >= 0, min_score None or a finite number in [-1, 1] (a cosine similarity); UserError
    naming the one that is not."""
    if not isinstance(offset, (int, np.integer)) or isinstance(offset, bool) or offset < 0:
        raise UserError(f"offset must be an integer of at least 0, got {offset!r}")
    if min_score is not None:
        if isinstance(min_score, bool) or not isinstance(min_score, (int, float, np.floating)) \
                or not -1 <= float(min_score) <= 1:
            raise UserError(f"min_score must be a number between -1 and 1 (a cosine similarity), got {min_score!r}")
        min_score = float(min_score)
    return int(offset), min_score


def open_model(store: Store, options=None, runtime: str | None = None):
    """The Embedder of the model an index records where it came from: on PyTorch, or on the runtime of the export
    it was built with (`index --runtime onnx`); `runtime` ("auto") overrides that."""
    from .. import runtimes

    source = store.model.get("source")
    if not source:
        raise SearchIndexError(f"{store.path}: the index does not say where its model came from; pass --model")
    return runtimes.open(source, runtime or runtimes.runtime_of(source), options)
