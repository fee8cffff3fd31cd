"""Indexing on many machines: the plan and its shards, each embedded once (shards.py), one unit's work (work.py),
the Ray Data pipeline (ray_executor.py, imported only for `--executor ray`), the run (index.py: plan, run, merge)
and the merge of shards into an index (merge.py). Another executor would be one more module beside
ray_executor.py, taking the same units and publishing the same shards."""

from .index import ClusterReport, build_index_ray
from .merge import MergeReport, merge_shards

__all__ = ["ClusterReport", "MergeReport", "build_index_ray", "merge_shards"]
