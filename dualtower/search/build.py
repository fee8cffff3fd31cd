"""Building and updating an index: embed what is new or changed, drop what is gone, keep the rest.

A record is unchanged when its file's size and modification time equal the stored ones; a file whose time
changed but whose content hash did not keeps its vector. Work is committed a batch at a time, so a killed run
loses at most one batch and the next run goes on from there (store.py says why nothing is duplicated or lost).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..data import open_source
from ..errors import UserError
from ..runtimes import as_embedder
from . import engines, metadata
from .records import Records, listing, stat
from .store import DamagedIndex, Store

log = logging.getLogger("dualtower.search")

def model_identity(model, source: str | None = None) -> dict:
    """What an index records of its model (an Embedder of any runtime, or a DualEncoder): name, config, fp32
    weights digest, and where it was loaded from."""
    return as_embedder(model).identity(source)


@dataclass
class BuildReport:
    seen: int = 0
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    touched: int = 0  # time changed, content did not
    removed: int = 0
    skipped: Counter = field(default_factory=Counter)
    items: int = 0
    engine: str = ""
    seconds: float = 0.0
    skipped_list: list = field(default_factory=list)  # (key, reason, detail) of this run's skips
    unreadable: list = field(default_factory=list)  # folders that could not be listed: their images unseen
    moved_aside: str = ""  # --repair: where the damaged index went

    @property
    def accepted(self) -> int:
        return self.added + self.changed + self.unchanged + self.touched

    def summary(self) -> str:
        skips = ", ".join(f"{n} {r}" for r, n in sorted(self.skipped.items())) or "none"
        return (f"seen {self.seen} = accepted {self.accepted} (new {self.added}, changed {self.changed}, "
                f"unchanged {self.unchanged + self.touched}) + skipped {sum(self.skipped.values())} ({skips}); "
                f"removed {self.removed}; the index holds {self.items} images ({self.engine}), "
                f"{self.seconds:.1f} s" + (f"; {len(self.unreadable)} folders could not be read, their images not "
                                           f"seen ({', '.join(map(str, self.unreadable[:3]))})"
                                           if self.unreadable else "")
                + (f"; the damaged index was moved to {self.moved_aside}" if self.moved_aside else ""))


def build_index(spec: str, model, out: "str | os.PathLike", engine: str = "auto", batch_size: int = 64,
                workers: int = 2, progress: bool = False, model_source: str | None = None,
                image_key: str = "image", caption_key: str = "caption", backend: str | None = None,
                uri: str | None = None, collection: str = "dualtower", repair: bool = False) -> BuildReport:
    """Create or update the index at `out` with the images of data spec `spec`, embedded by `model`.
    `backend="milvus"` keeps the vectors searched in a Milvus collection at `uri` (a Milvus Lite `.db` file,
    by default `out/milvus.db`, or a server's URL) instead of FAISS. `repair=True`: an index whose database is
    damaged is moved aside (to `OUT.damaged-TIME`, kept for inspection) and built again."""
    started = time.monotonic()
    engines.choose(engine, 0)  # a bad name fails before any work
    embedder = as_embedder(model)
    source = open_source(spec, image_key, caption_key, captions=False)  # a bad spec fails before the index exists
    create = lambda: Store.create(out, embedder.identity(model_source), embedder.cfg.embed_dim,  # noqa: E731
                                  backend_spec(backend, uri, collection, Path(out)))
    aside = None
    try:
        store = create()
    except DamagedIndex:
        if not repair:
            raise
        aside = Path(f"{os.fspath(out).rstrip(os.sep)}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        os.rename(out, aside)
        log.warning("%s: damaged; moved aside to %s and built again", out, aside)
        store = create()
    try:
        store.add_folders(source.folders())
        store.remember("source", source_record(spec, image_key, caption_key))
        report = BuildReport(seen=len(source), unreadable=list(source.unreadable), moved_aside=str(aside or ""))
        known, stored_fields = store.known(), store.stored_fields()
        seen_keys: set[str] = set()
        todo, new_fields = [], {}
        for i, key, file in listing(source, report.skipped):
            seen_keys.add(key)
            size, mtime = stat(file)
            old = known.get(key)
            same = old is not None and ((old[0], old[1]) == (size, mtime) if file is not None else old[2] is not None)
            if same:
                if old[3] is not None:  # skipped before, unchanged since: still bad
                    report.skipped[old[3]] += 1
                else:
                    report.unchanged += 1
                    fields = source.fields(i)  # an edited list row or sidecar: the image is the same
                    if metadata.canonical(fields) != stored_fields.get(key):
                        new_fields[key] = fields
                continue
            todo.append((i, key, file, size, mtime))
        gone = [k for k in known if k not in seen_keys]
        report.removed = store.remove(gone)
        store.set_fields(new_fields)
        _embed(store, source, todo, known, embedder, batch_size, workers, progress, report)
        finish(store, engine, report, started)
        return report
    finally:
        store.close()


def source_record(spec: str, image_key: str, caption_key: str) -> str:
    """What an index keeps of the data it was built from (an update from the service reads it): a path made
    absolute (a folder, a list, a pattern of shards or lists), a built-in name as it is."""
    where = os.path.abspath(spec) if os.path.exists(spec) or ".tar" in spec or "{" in spec else spec
    return json.dumps({"spec": where, "image_key": image_key, "caption_key": caption_key})


def finish(store: Store, engine: str, report, started: float) -> None:
    """The end of every build (here, and a merge of shards): dead rows compacted away, the engine brought up to date
    and saved; the index's size, its engine and the run's time in `report`."""
    store.compact()
    built = engines.ready(store, engine, save=True)
    report.items, report.engine = store.count(), built.kind
    report.seconds = time.monotonic() - started


def backend_spec(name: str | None, uri: str | None, collection: str, out: Path) -> dict | None:
    if name in (None, "faiss"):
        if uri is not None:
            raise UserError("--uri is for the Milvus backend (--backend milvus)")
        return None if name is None else {"name": "faiss"}
    if name != "milvus":
        raise UserError(f"backend {name!r} is not faiss or milvus")
    uri = uri or str(out / "milvus.db")
    if "://" not in uri:  # Milvus Lite: a local file, kept by its absolute path
        uri = os.path.abspath(uri)
    return {"name": "milvus", "uri": uri, "collection": collection}


def _embed(store: Store, source, todo: list, known: dict, embedder, batch_size: int, workers: int, progress: bool,
           report: BuildReport) -> None:
    if not todo:
        return
    # decoded by the runtime's workers (loader processes for PyTorch, threads for ONNX Runtime), batches ahead
    loader = embedder.map(Records(source, todo, embedder.transform), batch_size, workers)
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, total=len(loader), desc="index", unit="batch", dynamic_ncols=True)
    for batch in loader:
        good = []
        for r in batch:
            if "bad" in r:
                report.skipped[r["bad"]] += 1
                report.skipped_list.append((r["key"], r["bad"], r["detail"]))
                store.skip(r["key"], r["bad"], r["detail"], r["size"], r["mtime_ns"])
                continue
            old = known.get(r["key"])
            if old is not None and old[3] is None and old[2] == r["sha256"]:
                store.touch(r["key"], r["size"], r["mtime_ns"])
                store.set_fields({r["key"]: r["fields"]})  # the file was written again: its sidecar may be new
                report.touched += 1
                continue
            good.append(r)
            if old is not None and old[3] is None:
                report.changed += 1
            else:
                report.added += 1
        if not good:
            continue
        store.append(embedder.embed_pixels(embedder.collate([r.pop("pixels") for r in good])), good)
