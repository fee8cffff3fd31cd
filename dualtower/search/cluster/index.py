"""`dualtower index --executor ray`: plan the records into units, embed the units missing a shard on a cluster,
merge the shards into the index. Run again after any failure: only what is missing is embedded."""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ...data import open_source, sharded_files
from .. import engines
from ..build import backend_spec, source_record
from .merge import MergeReport, merge_shards
from ..records import DECODE_SECONDS, listing, stat
from .shards import Shards
from ..store import Store

SHARD_SIZE = 1000


@dataclass
class ClusterReport:
    seen: int = 0
    accepted: int = 0
    skipped: Counter = field(default_factory=Counter)
    units: int = 0  # units covering the data
    pending: int = 0  # of them, without a shard when the run began
    run: object = None  # ray_executor.RayRun, where units were embedded
    merge: MergeReport = field(default_factory=MergeReport)
    seconds: float = 0.0
    open_s: float = 0.0  # opening the model in the driver (its identity and preprocessing)
    unreadable: list = field(default_factory=list)

    def summary(self) -> str:
        skips = ", ".join(f"{n} {r}" for r, n in sorted(self.skipped.items())) or "none"
        run = self.run
        ray = (f"ray: {run.nodes} nodes, {run.cpus:g} CPUs, {run.gpus:g} GPUs, {run.actors} actors; start-up "
               f"{run.startup_s:.1f} s, pipeline {run.embed_s:.1f} s (summed over workers: opening the model "
               f"{run.open_s:.1f} s, decoding {run.decode_s:.1f} s, embedding {run.model_s:.1f} s); "
               if run is not None else "")
        return (f"seen {self.seen} = accepted {self.accepted} + skipped {sum(self.skipped.values())} ({skips}); "
                f"{self.units} shards, {self.pending} embedded now ({self.units - self.pending} were done); {ray}"
                f"{self.merge.summary()}; {self.seconds:.1f} s in all")


def build_index_ray(spec: str, open_model, out: "str | os.PathLike", shards_dir: "str | os.PathLike | None" = None,
                    shard_size: int | None = None, batch_size: int = 64, address: str | None = None,
                    cpus: int | None = None, actors: int | None = None, threads: int = 2,
                    deadline_s: float = DECODE_SECONDS, engine: str = "auto", backend: str | None = None,
                    uri: str | None = None, collection: str = "dualtower", image_key: str = "image",
                    caption_key: str = "caption", model_source: str | None = None,
                    progress: bool = False) -> ClusterReport:
    """Create or update the index at `out` with the images of `spec`, embedded on a Ray cluster by the model
    `open_model()` opens (called here and once in every actor: it must open the same weights each time). Shards go
    to `shards_dir` (default `OUT/shards`), `shard_size` records each (default SHARD_SIZE); sharded data (tar
    shards, a pattern of Parquet lists) goes a file a unit, each file listed by the worker that embeds it, so the
    driver's work and the plan grow with the number of files, not of images."""
    started = time.monotonic()
    engines.choose(engine, 0)
    embedder = open_model()  # a bad model fails before any work, here rather than in every actor
    report_open_s = time.monotonic() - started
    identity = embedder.identity(model_source)
    files = sharded_files(spec)  # tar shards, Parquet patterns: a unit per file, listed on the workers
    source = open_source(spec, image_key, caption_key, captions=False) if files is None else None
    # the index first: a folder that cannot be one (or one of another model) is refused before any work
    Store.create(out, identity, embedder.cfg.embed_dim, backend_spec(backend, uri, collection, Path(out))).close()
    shards = Shards(Path(shards_dir) if shards_dir is not None else Path(out) / "shards")
    shards.path.mkdir(parents=True, exist_ok=True)
    shards.bind(identity, embedder.cfg.embed_dim)

    report = ClusterReport(open_s=report_open_s)
    where: dict[str, tuple] = {}
    if source is not None:
        report.seen, report.unreadable = len(source), list(source.unreadable)
        records = []
        for i, key, file in listing(source, report.skipped):
            size, mtime = stat(file)
            where[key] = (i, file)
            records.append((key, size, mtime))
        units = shards.plan(records, shard_size or SHARD_SIZE)
        folders = source.folders()
    else:
        units = shards.plan([(os.path.abspath(f), *stat(f)) for f in files], 1)
        folders = [] if ".tar" in spec else sorted({os.path.dirname(os.path.abspath(f)) for f in files})
    done = set(shards.committed())
    pending = [u for u in units if u.id not in done]
    report.units, report.pending = len(units), len(pending)
    if pending:
        from . import ray_executor

        todo = {u.id: [(where[k][0], k, where[k][1], s, m) for k, s, m in u.records if k in where]
                if source is not None else {"file": u.records[0][0]} for u in pending}
        report.run = ray_executor.run(pending, todo, source, embedder.transform, open_model, identity,
                                      os.fspath(shards.path), batch_size, address, cpus, actors, threads,
                                      deadline_s, progress, (image_key, caption_key))
    del embedder
    report.merge = merge_shards(shards.path, out, engine, backend, uri, collection, folders,
                                keep=set(where) if source is not None else None,
                                source=source_record(spec, image_key, caption_key))
    if source is None:  # the counts of the files as they are now: their units' manifests
        for unit in units:
            manifest = shards.manifest(unit.id)
            report.seen += manifest["seen"]
            report.accepted += manifest["accepted"]
            report.skipped.update(manifest["reasons"])
    else:
        store = Store(out)
        try:
            for key, (_size, _mtime, _sha, reason) in store.known().items():
                if key in where:
                    if reason is None:
                        report.accepted += 1
                    else:
                        report.skipped[reason] += 1
        finally:
            store.close()
    report.seconds = time.monotonic() - started
    return report
