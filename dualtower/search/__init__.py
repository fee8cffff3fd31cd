"""Search a collection of images by text or by image: an index directory, queries, an HTTP service and a page.

    build_index(spec, model, out)   create or update an index (store.py: its layout and crash safety)
    build_index_ray(spec, open, out) the same on a Ray cluster, a shard per unit of work (cluster/)
    merge_shards(shards, out)       shards into an index (cluster/merge.py)
    SearchIndex(out)                query it by text, image, stored item or embedding (query.py)
    create_app(index)               the HTTP service and web page (server.py; FastAPI)

FAISS is the engine (engines/): exact search up to a size, then IVF-PQ with an exact re-rank; or Milvus.
"""

from .build import BuildReport, build_index, model_identity
from .cluster import ClusterReport, MergeReport, build_index_ray, merge_shards
from .query import Hit, SearchIndex
from .store import SearchIndexError, Store

__all__ = ["BuildReport", "ClusterReport", "Hit", "MergeReport", "SearchIndex", "SearchIndexError", "Store",
           "build_index", "build_index_ray", "merge_shards", "model_identity"]
