"""`index --executor ray`: the units of a plan run as a Ray Data pipeline (imported only when asked for).

    read + decode   a CPU task per unit: its records read, decoded, hashed, thumbnailed and transformed by a few
                    threads, each record under a time limit (records.prepare_all)
    embed + commit  an actor pool, one model per actor (a GPU each where the cluster has them): the unit embedded
                    and its shard published once (shards.py)

On a CPU-only cluster Ray fuses the two stages into the actors (the same resources), so decoded pixels never cross
the object store; with GPUs they stay apart and decoding runs on every CPU. A killed task is retried and a killed
actor restarted by Ray; a unit whose shard is already published is neither decoded nor embedded again, so a
retry, a restart or a second run does nothing twice.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from ...errors import UserError, require
from .work import check_model, decode, decode_file, embed_and_write
from .shards import Shards, Unit

log = logging.getLogger("dualtower.search")

_SOURCES: dict = {}  # per worker process: the source of a run, fetched once from the object store


@dataclass
class RayRun:
    startup_s: float = 0.0  # connecting to (or starting) the cluster
    embed_s: float = 0.0  # the pipeline, first unit to last
    committed: int = 0  # shards published by this run
    nodes: int = 0
    cpus: float = 0.0
    gpus: float = 0.0
    actors: int = 0
    decode_s: float = 0.0  # summed over units: reading, decoding, hashing, thumbnails, transforms
    model_s: float = 0.0  # summed over units: embedding and publishing
    open_s: float = 0.0  # summed over actors: opening the model
    open_max_s: float = 0.0  # the slowest actor's opening (they open together): the pipeline's own start-up


class _Embed:
    """One actor of the pool: its own model, opened once, checked to be the driver's."""

    def __init__(self, open_model, identity: dict, shards_dir: str, batch_size: int):
        started = time.perf_counter()
        self.embedder = open_model()
        check_model(self.embedder, identity)
        self.open_s = time.perf_counter() - started
        self.shards, self.batch_size = Shards(shards_dir), batch_size

    def __call__(self, batch: dict) -> dict:
        import pickle

        out = {"unit": [], "accepted": [], "skipped": [], "committed": [], "decode_s": [], "embed_s": [],
               "open_s": []}
        for unit_id, records, payload, decode_s in zip(batch["unit"], batch["records"], batch["payload"],
                                                       batch["decode_s"]):
            started = time.perf_counter()
            if payload is None or len(payload) == 0:  # published before this task: nothing to do
                result = {"unit": unit_id, "accepted": 0, "skipped": 0, "committed": False}
            else:
                items, seen, not_stored = pickle.loads(payload)
                result = embed_and_write(self.shards, Unit(unit_id, json.loads(records)), items, self.embedder,
                                         self.batch_size, seen, not_stored)
            result.update(decode_s=float(decode_s), embed_s=time.perf_counter() - started, open_s=self.open_s)
            self.open_s = 0.0  # counted once per actor
            for k in out:
                out[k].append(result[k])
        return out


def _decoder(source_ref, transform, shards_dir: str, threads: int, deadline_s: float, keys: tuple[str, str]):
    def run(row: dict) -> dict:
        import pickle

        import ray

        if (Shards(shards_dir).path / row["unit"]).exists():
            return {"unit": row["unit"], "records": row["records"], "payload": b"", "decode_s": 0.0}
        started = time.perf_counter()
        todo = json.loads(row["todo"])
        if isinstance(todo, dict):  # a unit of one input file, listed here
            decoded = decode_file(todo["file"], transform, keys[0], keys[1], threads, deadline_s)
        else:
            key = source_ref.hex()
            if key not in _SOURCES:
                _SOURCES.clear()
                _SOURCES[key] = ray.get(source_ref)
            decoded = (decode(_SOURCES[key], [tuple(t) for t in todo], transform, threads, deadline_s), None, None)
        return {"unit": row["unit"], "records": row["records"], "payload": pickle.dumps(decoded, protocol=5),
                "decode_s": time.perf_counter() - started}

    return run


def _user_error(error: BaseException) -> UserError | None:
    """A UserError of ours that a worker raised, found inside Ray's wrapping of it (None if there is none)."""
    import importlib
    import re

    seen, text = set(), str(error)
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, UserError):
            return UserError(str(error).strip().splitlines()[-1])
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    # an actor that failed to start carries its error as text only
    for where, name, message in reversed(re.findall(r"^(dualtower[\w.]*)\.(\w+): (.+)$", text, re.MULTILINE)):
        try:
            kind = getattr(importlib.import_module(where), name)
        except (ImportError, AttributeError):
            continue
        if isinstance(kind, type) and issubclass(kind, UserError):
            return UserError(message)
    return None


def _quiet() -> None:
    """Ray's notices (start-up, execution plans, progress-bar hints) stay out of the command's output; warnings of
    ours and Ray's errors do not."""
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run(units: list[Unit], todo: dict[str, "list | dict"], source, transform, open_model, identity: dict,
        shards_dir: str, batch_size: int = 64, address: str | None = None, cpus: int | None = None,
        actors: int | None = None, threads: int = 2, deadline_s: float = 60.0, progress: bool = False,
        keys: tuple[str, str] = ("image", "caption")) -> RayRun:
    """Embed `units` on the Ray cluster at `address` (or $RAY_ADDRESS; a local one with `cpus` CPUs when neither is
    given), publishing a shard each. todo: unit id -> its records in `source`, [(index, key, file, size,
    mtime_ns)], or {"file": path} for a unit of one input file (opened on the worker with `keys`, the image and
    caption columns; `source` is then None)."""
    ray = require("ray", "--executor ray", "ray")
    _quiet()
    report = RayRun()
    started = time.monotonic()
    here = not ray.is_initialized()
    if here:
        try:
            ray.init(address=address, num_cpus=cpus if address is None else None, include_dashboard=False,
                     logging_level=logging.WARNING, log_to_driver=False, configure_logging=False)
        except ConnectionError as e:
            raise UserError(f"--ray-address {address}: no Ray cluster answers there ({e})") from None
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        _quiet()  # Ray Data sets its loggers' levels when it starts
        resources = ray.cluster_resources()
        report.nodes = len([n for n in ray.nodes() if n.get("Alive")])
        report.cpus, report.gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
        report.startup_s = time.monotonic() - started
        gpu = report.gpus >= 1
        report.actors = actors or (int(report.gpus) if gpu else max(1, int(report.cpus)))
        report.actors = min(report.actors, len(units)) or 1
        source_ref = ray.put(source)
        rows = [{"unit": u.id, "records": json.dumps(u.records), "todo": json.dumps(todo[u.id])} for u in units]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        ds = ds.map(_decoder(source_ref, transform, shards_dir, threads, deadline_s, keys), num_cpus=1)
        ds = ds.map_batches(_Embed, batch_size=1, compute=ray.data.ActorPoolStrategy(size=report.actors),
                            num_cpus=1, num_gpus=1 if gpu else 0,
                            fn_constructor_kwargs={"open_model": open_model, "identity": identity,
                                                   "shards_dir": shards_dir, "batch_size": batch_size})
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(units), desc="index (ray)", unit="shard", dynamic_ncols=True)
        begun = time.monotonic()
        try:
            for row in ds.iter_rows():
                report.committed += bool(row["committed"])
                report.decode_s += row["decode_s"]
                report.model_s += row["embed_s"]
                report.open_s += row["open_s"]
                report.open_max_s = max(report.open_max_s, row["open_s"])
                if bar is not None:
                    bar.update(1)
        except ray.exceptions.RayError as e:
            ours = _user_error(e)
            if ours is not None:
                raise ours from None
            raise
        finally:
            if bar is not None:
                bar.close()
        report.embed_s = time.monotonic() - begun
        return report
    finally:
        if here:
            ray.shutdown()
