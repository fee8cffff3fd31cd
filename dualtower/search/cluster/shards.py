"""Shards: the unit of work of a distributed index build, each embedded once and committed whole.

    SHARDS/model.json            the model every shard was embedded with (identity, vector width); written once
    SHARDS/plan-00001.jsonl      generation 1 of the plan: one line per unit, {"unit", "records": [[key, size, mtime]]}
                                 (a record's key; or, for sharded data, an input file's path: a unit per file)
    SHARDS/00001-000042/         a committed shard (directory_once: published whole by one rename, never replaced)
        vectors.npy              float16 (accepted, dim), L2-normalised, in the order of records.jsonl
        records.jsonl            one accepted record per line (key, path, size, mtime_ns, sha256, width, height,
                                 caption, fields, phash, thumbnail as base64)
        skipped.jsonl            one bad record per line (key, reason, detail, size, mtime_ns)
        manifest.json            unit, counts (seen = accepted + skipped + not stored), each file's sha256

Exactly once comes from three rules. The plan is written before any work and never rewritten: a record belongs to
one unit of one generation, and a later run plans only records no generation holds yet (or whose file changed
since: the newer generation wins when shards are merged). A unit's shard is published by one rename onto a name
that is fixed by the plan, so a retried task, a restarted actor or a second driver can only find it there or put
it there, never add a second copy. And a run embeds the units that have no shard, so a killed run is finished by
running it again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ... import io
from ...errors import UserError

MODEL = "model.json"
MANIFEST = "manifest.json"
FILES = ("vectors.npy", "records.jsonl", "skipped.jsonl")
_PLAN = re.compile(r"plan-(\d{5})\.jsonl")
_UNIT = re.compile(r"\d{5}-\d{6}")


class ShardError(UserError):
    """A shards folder or a shard that cannot be used; the message names it and says what to do."""


@dataclass
class Unit:
    id: str  # "GGGGG-NNNNNN": generation and number; the name of its shard
    records: list  # [key, size, mtime_ns] each

    @property
    def generation(self) -> int:
        return int(self.id.split("-")[0])


class Shards:
    """One shards folder: its model, its plan, and the shards committed so far."""

    def __init__(self, path: "str | os.PathLike"):
        self.path = Path(path)

    # ------------------------------------------------------------------------------------------------ the model

    def bind(self, identity: dict, dim: int) -> None:
        """Tie the folder to a model (the first run), or refuse a model whose weights differ from its shards'."""
        model = self.path / MODEL
        if model.is_file():
            held = self.model()
            if held["identity"].get("weights_sha256") != identity.get("weights_sha256") or held["dim"] != dim:
                raise ShardError(f"{self.path}: its shards were embedded by {held['identity'].get('name')!r} "
                                 f"(weights {str(held['identity'].get('weights_sha256'))[:12]}); the model given "
                                 f"({identity.get('name')!r}, weights {str(identity.get('weights_sha256'))[:12]}) is "
                                 "another: use another --shards folder")
            return
        io.write_json(model, {"identity": identity, "dim": dim})

    def model(self) -> dict:
        model = self.path / MODEL
        if not model.is_file():
            raise ShardError(f"{self.path}: not a shards folder (no {MODEL}); `dualtower index DATA --executor ray` "
                             "makes one")
        return io.read_json(model)

    # ------------------------------------------------------------------------------------------------- the plan

    def plans(self) -> list[Unit]:
        """Every planned unit, oldest generation first."""
        units = []
        for plan in sorted(p for p in self.path.glob("plan-*.jsonl") if _PLAN.fullmatch(p.name)):
            with open(plan, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    try:
                        row = json.loads(line)
                        units.append(Unit(row["unit"], row["records"]))
                    except (ValueError, KeyError, TypeError) as e:
                        raise ShardError(f"{plan}:{n}: not a plan line ({e}); the plan was damaged after it was "
                                         "written: use a new --shards folder") from None
        return units

    def plan(self, records: list[tuple[str, int | None, int | None]], shard_size: int) -> list[Unit]:
        """The units that cover `records` (key, size, mtime_ns): those planned before that still hold a record as it
        is now, and a new generation for the records no unit holds as they are (new files, changed files). The
        new generation is written before it is returned."""
        units = self.plans()
        holder: dict[str, tuple] = {}
        for unit in units:
            for key, size, mtime in unit.records:
                holder[key] = (size, mtime, unit.id)
        wanted, fresh = set(), []
        for key, size, mtime in records:
            held = holder.get(key)
            if held is not None and (held[0], held[1]) == (size, mtime):
                wanted.add(held[2])
            else:
                fresh.append([key, size, mtime])
        chosen = [u for u in units if u.id in wanted]
        if fresh:
            generation = 1 + max((u.generation for u in units), default=0)
            new = [Unit(f"{generation:05d}-{n:06d}", fresh[i: i + shard_size])
                   for n, i in enumerate(range(0, len(fresh), shard_size))]
            io.write_text(self.path / f"plan-{generation:05d}.jsonl",
                          "".join(json.dumps({"unit": u.id, "records": u.records}) + "\n" for u in new))
            chosen += new
        return chosen

    # ---------------------------------------------------------------------------------------------- the shards

    def committed(self) -> list[str]:
        """The units whose shard is published, in merge order (generation, then number)."""
        return sorted(p.name for p in self.path.iterdir() if _UNIT.fullmatch(p.name) and p.is_dir())

    def write(self, unit: Unit, vectors: np.ndarray, accepted: list[dict], skipped: list[dict],
              seen: int | None = None, not_stored: dict | None = None) -> bool:
        """Publish `unit`'s shard; False when it was published already (by an earlier attempt): nothing changes.
        A unit of whole input files gives `seen` (its records) and `not_stored` (reason -> count of records
        skipped without a key of their own, such as a second record of the same key)."""
        target = self.path / unit.id
        if target.exists():
            return False
        with io.directory_once(target) as once:
            vectors = np.ascontiguousarray(vectors, dtype=np.float16)
            np.save(once.tmp / "vectors.npy", vectors, allow_pickle=False)
            (once.tmp / "records.jsonl").write_text("".join(_line(r) for r in accepted), encoding="utf-8")
            (once.tmp / "skipped.jsonl").write_text("".join(_line(r) for r in skipped), encoding="utf-8")
            manifest = {"unit": unit.id, "seen": len(unit.records) if seen is None else seen,
                        "accepted": len(accepted), "skipped": len(skipped), "not_stored": dict(not_stored or {}),
                        "reasons": dict(Counter(r["reason"] for r in skipped) + Counter(not_stored or {})),
                        "files": {name: _sha256(once.tmp / name) for name in FILES}}
            (once.tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        return once.committed

    def manifest(self, unit_id: str) -> dict:
        """A committed shard's manifest alone (its counts), unchecked: `read` checks."""
        return json.loads((self.path / unit_id / MANIFEST).read_text(encoding="utf-8"))

    def read(self, unit_id: str) -> tuple[dict, np.ndarray, list[dict], list[dict]]:
        """(manifest, vectors, accepted records, skipped records) of a committed shard, each file checked against
        its manifest's digest: a shard damaged since it was written is refused, naming it."""
        where = self.path / unit_id
        try:
            manifest = json.loads((where / MANIFEST).read_text(encoding="utf-8"))
            for name in FILES:
                if _sha256(where / name) != manifest["files"][name]:
                    raise ValueError(f"{name} differs from its digest")
            vectors = np.load(where / "vectors.npy", allow_pickle=False)
            accepted = [_record(line) for line in (where / "records.jsonl").read_text("utf-8").splitlines()]
            skipped = [json.loads(line) for line in (where / "skipped.jsonl").read_text("utf-8").splitlines()]
            unstored = sum(manifest.get("not_stored", {}).values())
            if len(vectors) != len(accepted) or manifest["seen"] != len(accepted) + len(skipped) + unstored:
                raise ValueError(f"{len(vectors)} vectors, {len(accepted)} records, {len(skipped)} skipped of "
                                 f"{manifest['seen']} seen")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ShardError(f"{where}: a damaged shard ({e}); delete it and run `dualtower index` again to "
                             "embed its records anew") from None
        return manifest, vectors, accepted, skipped


_BINARY = ("thumb", "phash")  # bytes, kept as base64


def _line(record: dict) -> str:
    out = dict(record)
    for name in _BINARY:
        if out.get(name) is not None:
            out[name] = base64.b64encode(out[name]).decode("ascii")
    return json.dumps(out, ensure_ascii=False, default=str) + "\n"


def _record(line: str) -> dict:
    record = json.loads(line)
    for name in _BINARY:
        if record.get(name) is not None:
            record[name] = base64.b64decode(record[name])
    return record


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
