"""Shards into a searchable index: `dualtower index merge` and the end of every `index --executor ray` run.

Each committed shard not merged before is added to the index (store.py) in the plan's order, so a record embedded
again in a later generation (its file changed) replaces the earlier vector; the shard's digest is then remembered
in the index, so a merge after a later run adds only the new shards. The search structure (FAISS flat or IVF-PQ,
or a Milvus collection) is built or brought up to date once, at the end. A kill at any point is finished by
merging again: records are keyed, so a shard merged twice changes nothing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from .. import engines
from ..build import backend_spec, finish
from .shards import Shards
from ..store import Store


@dataclass
class MergeReport:
    merged: int = 0  # shards added now
    already: int = 0  # shards the index held before
    accepted: int = 0
    skipped: int = 0
    removed: int = 0
    items: int = 0
    engine: str = ""
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"merged {self.merged} shards ({self.accepted} images, {self.skipped} skipped records), "
                f"{self.already} merged before; removed {self.removed}; the index holds {self.items} images "
                f"({self.engine}), {self.seconds:.1f} s")


def merge_shards(shards_dir: "str | os.PathLike", out: "str | os.PathLike", engine: str = "auto",
                 backend: str | None = None, uri: str | None = None, collection: str = "dualtower",
                 folders: list[str] = (), keep: set[str] | None = None, source: str | None = None) -> MergeReport:
    """Merge the shards at `shards_dir` into the index at `out` (created for the shards' model if new). `keep`:
    the keys the data holds now; the index's other records (files since removed) are dropped. `folders`: where
    the records' image files are (the service serves originals from these only)."""
    started = time.monotonic()
    engines.choose(engine, 0)
    shards = Shards(shards_dir)
    model = shards.model()
    store = Store.create(out, model["identity"], int(model["dim"]),
                         backend_spec(backend, uri, collection, Path(out)))
    report = MergeReport()
    try:
        store.add_folders(list(folders))
        if source is not None:
            store.remember("source", source)
        for unit_id in shards.committed():
            manifest, vectors, accepted, skipped = shards.read(unit_id)
            digest = manifest["files"]["vectors.npy"] + manifest["files"]["records.jsonl"]
            if store.get(f"shard:{unit_id}") == digest:
                report.already += 1
                continue
            if accepted:
                store.append(vectors, accepted)
            for s in skipped:
                store.skip(s["key"], s["reason"], s["detail"], s["size"], s["mtime_ns"])
            store.remember(f"shard:{unit_id}", digest)
            report.merged += 1
            report.accepted += len(accepted)
            report.skipped += len(skipped)
        if keep is not None:
            report.removed = store.remove([k for k in store.known() if k not in keep])
        finish(store, engine, report, started)
        return report
    finally:
        store.close()
