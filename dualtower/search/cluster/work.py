"""The work of one unit, wherever it runs (a Ray task and actor, or this process): its records decoded under a time
limit, embedded, and its shard published once (shards.py)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from ...data import open_source
from ..records import DECODE_SECONDS, Records, listing, prepare_all, stat
from .shards import Shards, ShardError, Unit

_ACCEPTED = ("key", "path", "size", "mtime_ns", "sha256", "width", "height", "caption", "fields", "phash", "thumb")


def decode(source, todo: list[tuple], transform, threads: int = 2, deadline_s: float = DECODE_SECONDS) -> list[dict]:
    """The unit's records (todo: (source index, key, file, size, mtime_ns) each) prepared for embedding: decoded,
    hashed, thumbnailed, transformed, or the reason each is bad."""
    return prepare_all(Records(source, todo, transform), threads, deadline_s)


def decode_file(path: str, transform, image_key: str, caption_key: str, threads: int = 2,
                deadline_s: float = DECODE_SECONDS) -> tuple[list[dict], int, Counter]:
    """A unit of one input file (a tar shard, a Parquet list): (items, records seen, not stored by reason). The
    file is opened here, on the worker: the driver never lists its records."""
    source = open_source(path, image_key, caption_key, captions=False)
    not_stored: Counter = Counter()
    size, mtime = stat(path)
    todo = [(i, key, path, size, mtime) for i, key, _ in listing(source, not_stored)]
    return decode(source, todo, transform, threads, deadline_s), len(source), not_stored


def embed_and_write(shards: Shards, unit: Unit, items: list[dict], embedder, batch_size: int,
                    seen: int | None = None, not_stored: dict | None = None) -> dict:
    """Embed the unit's good records `batch_size` at a time and publish its shard; what happened, as a dict."""
    good = [r for r in items if "bad" not in r]
    skipped = [{"key": r["key"], "reason": r["bad"], "detail": r["detail"], "size": r["size"],
                "mtime_ns": r["mtime_ns"]} for r in items if "bad" in r]
    parts = [embedder.embed_pixels(embedder.collate([r["pixels"] for r in good[i: i + batch_size]]))
             for i in range(0, len(good), batch_size)]
    vectors = np.concatenate(parts) if parts else np.zeros((0, embedder.cfg.embed_dim), np.float32)
    accepted = [{k: r.get(k) for k in _ACCEPTED} for r in good]
    committed = shards.write(unit, vectors, accepted, skipped, seen, not_stored)
    return {"unit": unit.id, "accepted": len(accepted), "skipped": len(skipped), "committed": committed}


def check_model(embedder, identity: dict) -> None:
    """A worker's model must be the driver's: the same weights (an architecture name opens different random
    weights in every process)."""
    mine = embedder.identity().get("weights_sha256")
    if mine != identity.get("weights_sha256"):
        raise ShardError(f"the model opened on a worker (weights {str(mine)[:12]}) is not the driver's (weights "
                         f"{str(identity.get('weights_sha256'))[:12]}): an architecture name gives random weights that "
                         "differ per process; save the model (dualtower convert, or a checkpoint) and pass its path")
