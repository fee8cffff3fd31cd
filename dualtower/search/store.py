"""The index directory: what survives a kill at any moment.

    index.json     the model's identity (name, config, weights digest) and the vector width; written once
    meta.sqlite    one row per image (id, key, path, size, mtime, content hash, width, height, caption, thumbnail,
                   vector row, folder, extension, the user's fields: metadata.py), the files skipped and why, and
                   the committed vector count, in SQLite (WAL)
    vectors-N.f16  float16 rows, L2-normalised, append-only, memory-mapped by readers
    engine.faiss   the search structure (see engines/faiss_index.py), with the generation of the rows it was built from

Crash safety comes from one rule: a vector row exists for readers only once SQLite has committed it. Rows are
appended and fsynced first, then the items that point at them are committed in one transaction together with the
new row count; a kill between the two leaves rows past the committed count, which the next writer cuts off. A
compaction writes a new vectors file and publishes it by the same kind of commit (the file's name is in SQLite);
files no commit names are removed by the next writer.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import io
from ..errors import UserError
from . import metadata

FORMAT = "dualtower-index"
VERSION = 1
MANIFEST = "index.json"
DATABASE = "meta.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT UNIQUE NOT NULL,      -- the record's identity in its source (a relative path, shard/key, ...)
    path TEXT,                     -- the image file, where the record is one
    size INTEGER, mtime_ns INTEGER, sha256 TEXT,
    width INTEGER, height INTEGER, caption TEXT,
    thumb BLOB,
    row INTEGER UNIQUE NOT NULL    -- its vector's row in the vectors file
);
CREATE TABLE IF NOT EXISTS skipped (
    key TEXT PRIMARY KEY, reason TEXT NOT NULL, detail TEXT, size INTEGER, mtime_ns INTEGER
);
"""


class SearchIndexError(UserError):
    """An index that cannot be used as asked; the message names the index and the reason."""


class DamagedIndex(SearchIndexError):
    """An index whose database cannot be read: `dualtower index --repair` builds it again."""


@dataclass
class Item:
    id: int
    key: str
    path: str | None
    caption: str | None
    width: int
    height: int
    row: int


class Store:
    """One index directory. `Store.create` starts one for a model; `Store(path)` opens an existing one."""

    def __init__(self, path: "str | os.PathLike", writable: bool = False):
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            raise SearchIndexError(f"{self.path}: not a dualtower index (no {MANIFEST})")
        self.manifest = io.read_json(manifest)
        if self.manifest.get("format") != FORMAT or self.manifest.get("version") != VERSION:
            raise SearchIndexError(f"{self.path}: {MANIFEST} is not a version-{VERSION} {FORMAT} manifest")
        self.dim = int(self.manifest["dim"])
        self.writable = writable
        self._lock = threading.Lock()  # one connection, shared by a server's threads
        uri = f"file:{self.path / DATABASE}" + ("" if writable else "?mode=ro")
        try:
            self.db = sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False, isolation_level=None)
            if writable:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")
                self.db.executescript(_SCHEMA)
                metadata.migrate(self.db)
            # a light check (a full integrity check reads every thumbnail): the tables are there and readable
            self.db.execute("SELECT count(*) FROM meta").fetchone()
            self.db.execute("SELECT max(id), max(row) FROM items").fetchone()
            if writable:
                self._recover()
                if self.get("store_id") is None:  # ties an engine file to this store (older indexes get one now)
                    self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('store_id', ?)",
                                    (uuid.uuid4().hex,))
        except sqlite3.DatabaseError as e:
            raise DamagedIndex(f"{self.path / DATABASE}: damaged ({e}); `dualtower index DATA --out {self.path} "
                               "--repair` moves the damaged index aside and builds it again") from None

    @classmethod
    def create(cls, path: "str | os.PathLike", identity: dict, dim: int, backend: dict | None = None) -> "Store":
        """Open `path` for writing, creating it for `identity` (the model's) if it is new; an index built with
        another model is refused. `backend`: where the vectors are searched ({"name": "faiss"} by default, or
        {"name": "milvus", "uri": ..., "collection": ...}); an existing index keeps its own."""
        path = Path(path)
        manifest = path / MANIFEST
        if manifest.is_file():
            store = cls(path, writable=True)
            store.check_model(identity)
            if backend is not None and backend != store.backend:
                raise SearchIndexError(f"{path}: the index searches with {store.backend}, not {backend}; build a "
                                       "new index for another backend")
            return store
        if path.exists() and any(path.iterdir()):
            raise SearchIndexError(f"{path}: exists and is not a dualtower index; choose a new or empty folder")
        path.mkdir(parents=True, exist_ok=True)
        io.write_json(manifest, {"format": FORMAT, "version": VERSION, "dim": dim, "model": identity,
                                 "backend": backend or {"name": "faiss"}})
        return cls(path, writable=True)

    # ------------------------------------------------------------------------------------------- identity

    @property
    def model(self) -> dict:
        return self.manifest["model"]

    @property
    def backend(self) -> dict:
        return self.manifest.get("backend") or {"name": "faiss"}

    def check_model(self, identity: dict) -> None:
        ours = self.model
        if ours.get("weights_sha256") != identity.get("weights_sha256") or \
                _unnamed(ours.get("config")) != _unnamed(identity.get("config")):  # a name is often just its path
            theirs = f"{identity.get('name')!r} (weights {identity.get('weights_sha256', '')[:12]})"
            raise SearchIndexError(
                f"{self.path} was built with model {ours.get('name')!r} (weights "
                f"{ours.get('weights_sha256', '')[:12]}), not {theirs}; query it with the index's own model, or "
                "build a new index")

    # ---------------------------------------------------------------------------------------- meta values

    def get(self, key: str, default: str | None = None) -> str | None:
        with self._lock:  # a server's threads share the connection
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    @property
    def rows(self) -> int:
        """Committed vector rows (live and dead)."""
        return int(self.get("rows", "0"))

    @property
    def store_id(self) -> str:
        """This store's identity: an engine file built from another index (or a copy of one) is not used."""
        return self.get("store_id", "")

    @property
    def generation(self) -> int:
        """Counts the commits that changed the items; an engine built at another generation is stale."""
        return int(self.get("generation", "0"))

    @property
    def folders(self) -> list[str]:
        """The folders (resolved) whose files the index's records are: the only places `/image/{id}` serves from."""
        return json.loads(self.get("folders", "[]"))

    def add_folders(self, folders: list[str]) -> None:
        known = self.folders
        new = [f for f in (os.path.realpath(f) for f in folders) if f not in known]
        if new:
            self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('folders', ?)",
                            (json.dumps(known + new),))

    @property
    def vectors_path(self) -> Path:
        return self.path / self.get("vectors_file", "vectors-0.f16")

    def count(self) -> int:
        with self._lock:
            return self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    # ------------------------------------------------------------------------------------------- recovery

    def _recover(self) -> None:
        """Cut rows a killed writer appended but never committed, and remove vectors files no commit names."""
        named = self.vectors_path
        committed = self.rows * self.dim * 2
        if named.exists() and named.stat().st_size > committed:
            with open(named, "r+b") as f:
                f.truncate(committed)
                os.fsync(f.fileno())
        for stray in self.path.glob("vectors-*.f16"):
            if stray != named:
                stray.unlink()

    # -------------------------------------------------------------------------------------------- writing

    def append(self, vectors: np.ndarray, records: list[dict]) -> None:
        """Add or replace records (dicts of the items columns but id and row) with their vectors, in one commit.
        A record whose key is present keeps its id and gets the new vector."""
        assert self.writable and len(vectors) == len(records)
        start = self.rows
        data = np.ascontiguousarray(vectors, dtype=np.float16)
        if data.ndim != 2 or data.shape[1] != self.dim:
            raise SearchIndexError(f"{self.path}: vectors of shape {data.shape}, expected (N, {self.dim})")
        with open(self.vectors_path, "ab") as f:
            f.write(data.tobytes())
            f.flush()
            os.fsync(f.fileno())
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            for i, r in enumerate(records):
                cur.execute("DELETE FROM skipped WHERE key = ?", (r["key"],))
                folder, ext = metadata.place(r["key"], r["path"])
                cur.execute(
                    "INSERT INTO items (key, path, size, mtime_ns, sha256, width, height, caption, thumb, row, "
                    "folder, ext, fields, phash) VALUES (:key, :path, :size, :mtime_ns, :sha256, :width, :height, "
                    ":caption, :thumb, :row, :folder, :ext, :fields, :phash) "
                    "ON CONFLICT(key) DO UPDATE SET path=excluded.path, size=excluded.size, "
                    "mtime_ns=excluded.mtime_ns, sha256=excluded.sha256, width=excluded.width, "
                    "height=excluded.height, caption=excluded.caption, thumb=excluded.thumb, row=excluded.row, "
                    "folder=excluded.folder, ext=excluded.ext, fields=excluded.fields, phash=excluded.phash",
                    {**r, "row": start + i, "folder": folder, "ext": ext, "phash": r.get("phash"),
                     "fields": metadata.canonical(r.get("fields"))})
                (item_id,) = cur.execute("SELECT id FROM items WHERE key = ?", (r["key"],)).fetchone()
                metadata.write(cur, item_id, r.get("fields"))
            self._set(cur, "rows", start + len(records))
            self._bump(cur)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def touch(self, key: str, size: int, mtime_ns: int) -> None:
        """A file whose time changed but whose content did not: keep its vector."""
        self.db.execute("UPDATE items SET size = ?, mtime_ns = ? WHERE key = ?", (size, mtime_ns, key))

    def set_fields(self, changed: dict[str, dict | None]) -> None:
        """New fields of unchanged images (key -> fields), in one commit; the vectors stay as they are."""
        if not changed:
            return
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        for key, fields in changed.items():
            row = cur.execute("SELECT id FROM items WHERE key = ?", (key,)).fetchone()
            if row is not None:
                cur.execute("UPDATE items SET fields = ? WHERE id = ?", (metadata.canonical(fields), row[0]))
                metadata.write(cur, row[0], fields)
        self._set(cur, "fields_generation", int(self.get("fields_generation") or 0) + 1)
        cur.execute("COMMIT")

    def skip(self, key: str, reason: str, detail: str, size: int | None, mtime_ns: int | None) -> None:
        """Remember a bad record (and forget any earlier vector of it)."""
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        changed = cur.execute("DELETE FROM items WHERE key = ?", (key,)).rowcount
        cur.execute("INSERT OR REPLACE INTO skipped (key, reason, detail, size, mtime_ns) VALUES (?, ?, ?, ?, ?)",
                    (key, reason, detail, size, mtime_ns))
        if changed:
            self._bump(cur)
        cur.execute("COMMIT")

    def remove(self, keys: list[str]) -> int:
        """Drop the records of `keys` (files that are gone), in one commit."""
        if not keys:
            return 0
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        removed = 0
        for key in keys:
            removed += cur.execute("DELETE FROM items WHERE key = ?", (key,)).rowcount
            cur.execute("DELETE FROM skipped WHERE key = ?", (key,))
        if removed:
            self._bump(cur)
        cur.execute("COMMIT")
        return removed

    def compact(self, min_dead: int = 1024) -> bool:
        """Rewrite the vectors without dead rows when they are at least half the file (and `min_dead`)."""
        live, rows = self.count(), self.rows
        if rows - live < max(min_dead, live):
            return False
        order = [r for (r,) in self.db.execute("SELECT row FROM items ORDER BY row")]
        old = self.vectors()
        number = int(self.vectors_path.stem.split("-")[1]) + 1
        new = self.path / f"vectors-{number}.f16"
        with open(new, "wb") as f:
            for chunk in range(0, len(order), 65536):
                f.write(np.ascontiguousarray(old[order[chunk: chunk + 65536]]).tobytes())
            f.flush()
            os.fsync(f.fileno())
        io.fsync_dir(self.path)
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        cur.execute("UPDATE items SET row = -1 - row")  # two steps: rows are unique
        for i, r in enumerate(order):
            cur.execute("UPDATE items SET row = ? WHERE row = ?", (i, -1 - r))
        self._set(cur, "rows", len(order))
        self._set(cur, "vectors_file", new.name)
        self._bump(cur)
        cur.execute("COMMIT")
        del old
        self._recover()
        return True

    def _set(self, cur, key: str, value) -> None:
        cur.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, str(value)))

    def _bump(self, cur) -> None:
        self._set(cur, "generation", self.generation + 1)

    # -------------------------------------------------------------------------------------------- reading

    def vectors(self) -> np.ndarray:
        """(rows, dim) float16, memory-mapped: only the committed rows."""
        rows = self.rows
        if rows == 0:
            return np.zeros((0, self.dim), dtype=np.float16)
        return np.memmap(self.vectors_path, dtype=np.float16, mode="r", shape=(rows, self.dim))

    def live_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, ids) of every item, ordered by row."""
        with self._lock:
            data = self.db.execute("SELECT row, id FROM items ORDER BY row").fetchall()
        arr = np.array(data, dtype=np.int64).reshape(-1, 2)
        return arr[:, 0], arr[:, 1]

    def remember(self, key: str, value: str) -> None:
        """Keep `value` under `key` in the index's meta table (what built it, for an update from the service)."""
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def read(self, fn):
        """`fn(connection)` under the lock the server's threads share the connection by."""
        with self._lock:
            return fn(self.db)

    def stored_fields(self) -> dict[str, str | None]:
        """key -> the fields' canonical JSON (metadata.canonical) of every item."""
        return dict(self.db.execute("SELECT key, fields FROM items"))

    def known(self) -> dict[str, tuple]:
        """key -> (size, mtime_ns, sha256, skip reason or None) of every record seen before."""
        out = {k: (s, m, h, None) for k, s, m, h in self.db.execute("SELECT key, size, mtime_ns, sha256 FROM items")}
        out.update({k: (s, m, None, r) for k, s, m, r in
                    self.db.execute("SELECT key, size, mtime_ns, reason FROM skipped")})
        return out

    def items(self, ids: list[int]) -> dict[int, Item]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self.db.execute(f"SELECT id, key, path, caption, width, height, row FROM items "
                                   f"WHERE id IN ({marks})", [int(i) for i in ids]).fetchall()
        return {r[0]: Item(*r) for r in rows}

    def item(self, item_id: int) -> Item | None:
        return self.items([item_id]).get(int(item_id))

    def thumb(self, item_id: int) -> bytes | None:
        with self._lock:
            row = self.db.execute("SELECT thumb FROM items WHERE id = ?", (int(item_id),)).fetchone()
        return row[0] if row else None

    def skipped(self) -> list[tuple[str, str, str]]:
        return self.db.execute("SELECT key, reason, detail FROM skipped ORDER BY key").fetchall()

    def describe(self) -> dict:
        return {"path": str(self.path), "items": self.count(), "rows": self.rows, "dim": self.dim,
                "model": self.model.get("name"), "generation": self.generation}

    def close(self) -> None:
        self.db.close()


def _unnamed(config):
    """A config as model identity: without its name, and a convolutional tower folded or not (reparameterizing
    changes the operations, not the function; the weights digest is the unfolded model's)."""
    if not isinstance(config, dict):
        return config
    out = {k: v for k, v in config.items() if k != "name"}
    if isinstance(out.get("vision"), dict) and "folded" in out["vision"]:
        out["vision"] = {k: v for k, v in out["vision"].items() if k != "folded"}
    return out
