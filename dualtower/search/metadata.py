"""What an index keeps of each image besides its vector, for filters: built-in columns of the items table (folder
and extension beside the path, size, time, width, height and caption it had) and the user's own fields (a data
source's other columns, or a JSON sidecar beside an image), one row per value in `item_fields`. Every column a
filter reads is indexed (the index holds the item id), so a condition reads an index, never the items' rows with
their thumbnails.

A field's value is text, a number, a boolean or a list of them (tags: one row each); a nested object is
flattened with dots (`exif.model`). Each value is kept as text and, where it reads as a finite number, as a
number too, so `rating>=3` works on a CSV column of digits.
"""

from __future__ import annotations

import json
import math
import posixpath

COLUMNS = {"folder": "TEXT", "ext": "TEXT", "fields": "TEXT", "phash": "BLOB"}  # added to the items table
SCHEMA = """
CREATE TABLE IF NOT EXISTS item_fields (id INTEGER NOT NULL, name TEXT NOT NULL, text TEXT, num REAL);
CREATE INDEX IF NOT EXISTS item_fields_text ON item_fields (name, text, id);
CREATE INDEX IF NOT EXISTS item_fields_num ON item_fields (name, num, id);
CREATE INDEX IF NOT EXISTS item_fields_id ON item_fields (id);
CREATE INDEX IF NOT EXISTS items_folder ON items (folder);
CREATE INDEX IF NOT EXISTS items_ext ON items (ext);
CREATE INDEX IF NOT EXISTS items_size ON items (size);
CREATE INDEX IF NOT EXISTS items_mtime ON items (mtime_ns);
CREATE INDEX IF NOT EXISTS items_width ON items (width);
CREATE INDEX IF NOT EXISTS items_height ON items (height);
CREATE INDEX IF NOT EXISTS items_caption ON items (caption);
CREATE INDEX IF NOT EXISTS items_path ON items (path);
CREATE TRIGGER IF NOT EXISTS item_fields_gone AFTER DELETE ON items
    BEGIN DELETE FROM item_fields WHERE id = old.id; END;
"""
MAX_VALUES = 256  # values kept per record (a list longer than this is cut)
MAX_TEXT = 1000  # characters kept per value


def migrate(db) -> None:
    """Give an index made before filters its metadata columns and tables (a writer opening it), and fill folder
    and extension of the records it holds."""
    have = {row[1] for row in db.execute("PRAGMA table_info(items)")}
    added = [name for name in COLUMNS if name not in have]
    for name in added:
        db.execute(f"ALTER TABLE items ADD COLUMN {name} {COLUMNS[name]}")
    db.executescript(SCHEMA)
    if added:
        rows = db.execute("SELECT id, key, path FROM items").fetchall()
        db.executemany("UPDATE items SET folder = ?, ext = ? WHERE id = ?",
                       [(*place(key, path), item_id) for item_id, key, path in rows])


def has_fields(db) -> bool:
    """Whether this index keeps metadata for filters (an index from before them does not, until its next run)."""
    return "folder" in {row[1] for row in db.execute("PRAGMA table_info(items)")}


def place(key: str, path: str | None) -> tuple[str, str]:
    """(folder, extension) of a record: the folder part of its key (relative to the indexed folder; "" at the
    top) and the lower-case suffix of its file or key without the dot ("" if none)."""
    name = path or key
    suffix = posixpath.splitext(name.replace("\\", "/"))[1]
    return posixpath.dirname(key), suffix[1:].lower()


def canonical(fields: dict | None) -> str | None:
    """A record's fields as one JSON text (keys sorted), None when it has none: what is stored and compared."""
    if not fields:
        return None
    return json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def flatten(fields: dict, prefix: str = "") -> list[tuple[str, object]]:
    """(name, scalar value) pairs: nested objects by dotted names, lists as several values of one name."""
    out = []
    for name, value in fields.items():
        name = f"{prefix}{name}"
        if isinstance(value, dict):
            out += flatten(value, name + ".")
        elif isinstance(value, (list, tuple)):
            out += [(name, v) for v in value if v is not None and not isinstance(v, (dict, list, tuple))]
        elif value is not None:
            out.append((name, value))
    return out[:MAX_VALUES]


def number(value) -> float | None:
    """The value as a finite number where it is one (an int, a float, or text that reads as one), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str) and len(value) <= 40:
        try:
            n = float(value)
        except ValueError:
            return None
        return n if math.isfinite(n) else None
    return None


def text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)[:MAX_TEXT]


def write(cur, item_id: int, fields: dict | None) -> None:
    """Replace the field rows of item `item_id` (inside the caller's transaction)."""
    cur.execute("DELETE FROM item_fields WHERE id = ?", (item_id,))
    if fields:
        cur.executemany("INSERT INTO item_fields (id, name, text, num) VALUES (?, ?, ?, ?)",
                        [(item_id, name, text(v), number(v)) for name, v in flatten(fields)])


def field_kinds(db) -> dict[str, bool]:
    """Each user field name of the index -> whether any of its values is a number."""
    return {name: bool(numeric) for name, numeric in
            db.execute("SELECT name, max(num IS NOT NULL) FROM item_fields GROUP BY name")}
