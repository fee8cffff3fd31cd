"""Search a collection of images by text or by image: an index directory, queries, an HTTP service and a page.

    build_index(spec, model, out)   create or update an index (store.py: its layout and crash safety)
    SearchIndex(out)                query it by text, image, stored item or embedding (query.py)
    create_app(index)               the HTTP service and web page (server.py; FastAPI)

FAISS is the engine (engines/): exact search up to a size, then IVF-PQ with an exact re-rank; or Milvus.
"""

from .build import BuildReport, build_index, model_identity
from .query import Hit, SearchIndex
from .store import SearchIndexError, Store

__all__ = ["BuildReport", "Hit", "SearchIndex", "SearchIndexError", "Store", "build_index", "model_identity"]
