"""Filters: conditions `FIELD OP VALUE` that every hit meets, on what the index keeps of each image (metadata.py),
answered by one SQL query over the items table; the rows it leaves are the only ones the engine searches.

    folder=2024/trip        that folder and the ones below it; with * or ?, a glob (folder=2024/*/raw)
    path=*/beach/*.jpg      the record's key (its path in the source) or its file's path matches the glob
    ext=jpg,png             one of these extensions (lower case, no dot)
    mtime>=2024-05-01       the file's modification time: an ISO date or date-time (UTC unless it says);
                            mtime=2024-05-01 is that whole day
    size<2MB                the file's bytes (k, M, G: powers of 1000; KiB, MiB, GiB: of 1024)
    width>=1024, height<800 pixels
    caption~beach           the caption contains it (any case); caption=... is the whole caption
    rating>=3, camera=X100  the index's own fields (a list's other columns, an image's JSON sidecar):
    tags=sunset, tags~sun   = and != compare text (and numbers as numbers), ~ contains, < <= > >= numbers

Operators: = != < <= > >= ~ (contains). `!=` also keeps images that lack the field. A condition that can never
hold (an unknown field, a range on text, size>=10 with size<5) is refused with a message naming it.
"""

from __future__ import annotations

import datetime
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from . import metadata

OPS = (">=", "<=", "!=", "=", "<", ">", "~")
_CONDITION = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(>=|<=|!=|=|<|>|~)\s*(.*?)\s*$", re.S)
TEXT_FIELDS = {"folder": ("=", "!="), "path": ("=", "!=", "~"), "ext": ("=", "!="), "caption": ("=", "!=", "~")}
NUMBER_FIELDS = ("mtime", "size", "width", "height")
BUILT_IN = (*TEXT_FIELDS, *NUMBER_FIELDS)
MAX_CONDITIONS = 32
MAX_LENGTH = 1000
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "kib": 2**10,
          "mib": 2**20, "gib": 2**30}


class FilterError(UserError):
    """A filter that cannot be applied; the message names the condition and why."""


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: str

    def __str__(self) -> str:
        return f"{self.field}{self.op}{self.value}"


def parse(where) -> tuple[Condition, ...]:
    """Conditions from None, one `FIELD OP VALUE` text, or a list of texts (or Conditions); a value may be quoted."""
    if where is None:
        return ()
    items = [where] if isinstance(where, (str, Condition)) else list(where)
    if len(items) > MAX_CONDITIONS:
        raise FilterError(f"where: {len(items)} conditions, over the {MAX_CONDITIONS} allowed")
    out = []
    for item in items:
        if isinstance(item, Condition):
            out.append(item)
            continue
        if not isinstance(item, str) or len(item) > MAX_LENGTH:
            raise FilterError(f"where: each condition is a text of at most {MAX_LENGTH} characters, like "
                              f"'ext=jpg' or 'rating>=3'; got {str(item)[:40]!r}")
        match = _CONDITION.match(item)
        if match is None or not match.group(3):
            raise FilterError(f"where {item[:60]!r}: not FIELD OP VALUE (operators {' '.join(OPS)}), like 'ext=jpg' "
                              "or 'rating>=3'")
        field, op, value = match.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out.append(Condition(field, op, value))
    return tuple(out)


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _number(c: Condition) -> float:
    try:
        value = float(c.value)
    except ValueError:
        raise FilterError(f"where {c}: {c.field} {c.op} needs a number, got {c.value[:40]!r}") from None
    if not np.isfinite(value):
        raise FilterError(f"where {c}: {c.field} needs a finite number")
    return value


def _size(c: Condition) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)", c.value)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise FilterError(f"where {c}: size takes bytes, or a number with k, M, G (KiB, MiB, GiB), like 2MB; "
                          f"got {c.value[:40]!r}")
    return float(match.group(1)) * _UNITS[unit]


def _time(c: Condition) -> tuple[int, int | None]:
    """(nanoseconds, the end of the day for a bare date, else None)."""
    try:
        when = datetime.datetime.fromisoformat(c.value)
    except ValueError:
        raise FilterError(f"where {c}: mtime takes an ISO date or date-time, like 2024-05-01 or "
                          f"2024-05-01T12:00; got {c.value[:40]!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    start = int(when.timestamp()) * 10**9 + when.microsecond * 1000
    day = len(c.value) == 10  # YYYY-MM-DD
    return start, start + 86400 * 10**9 if day else None


class _Ranges:
    """The numeric bounds each field's conditions set, to refuse a combination that leaves nothing."""

    def __init__(self):
        self.low: dict[str, tuple[float, bool, Condition]] = {}
        self.high: dict[str, tuple[float, bool, Condition]] = {}

    def add(self, c: Condition, low: float | None, high: float | None, strict_low=False, strict_high=False):
        if low is not None and (c.field not in self.low or low > self.low[c.field][0]):
            self.low[c.field] = (low, strict_low, c)
        if high is not None and (c.field not in self.high or high < self.high[c.field][0]):
            self.high[c.field] = (high, strict_high, c)

    def check(self) -> None:
        for field in set(self.low) & set(self.high):
            (lo, strict_lo, a), (hi, strict_hi, b) = self.low[field], self.high[field]
            if lo > hi or (lo == hi and (strict_lo or strict_hi)):
                both = f"{a}" if a is b else f"{a} and {b}"
                raise FilterError(f"where {both}: no value of {field} is in that range")


def _bounds(op: str, value: float, ranges: _Ranges, c: Condition) -> None:
    if op in (">", ">="):
        ranges.add(c, value, None, strict_low=op == ">")
    elif op in ("<", "<="):
        ranges.add(c, None, value, strict_high=op == "<")
    elif op == "=":
        ranges.add(c, value, value)


@dataclass(frozen=True)
class Part:
    """One condition as SQL: `query` selects item ids (reading an index only); the condition holds for those,
    or with `negate`, for every item but those."""

    query: str
    params: tuple
    negate: bool = False


def compile_parts(conditions: tuple[Condition, ...], kinds: dict[str, bool]) -> list[Part]:
    """One Part per condition. `kinds`: the index's own fields (name -> whether any value is a number)."""
    parts, ranges = [], _Ranges()
    for c in conditions:
        f, op, v = c.field, c.op, c.value
        if f in TEXT_FIELDS:
            if op not in TEXT_FIELDS[f]:
                raise FilterError(f"where {c}: {f} takes {' or '.join(TEXT_FIELDS[f])}, not {op}")
            if f == "folder":
                v = v.strip("/")
                sql, args = ("folder GLOB ?", [v]) if any(ch in v for ch in "*?[") else \
                    ("(folder = ? OR folder GLOB ?)", [v, _glob_escape(v) + "/*"])
            elif f == "path" and op == "~":
                sql, args = "(instr(key, ?) > 0 OR instr(coalesce(path, ''), ?) > 0)", [v, v]
            elif f == "path":
                sql, args = "(key GLOB ? OR coalesce(path, '') GLOB ?)", [v, v]
            elif f == "ext":
                names = [e.strip().lstrip(".").lower() for e in v.split(",") if e.strip()]
                sql, args = f"ext IN ({','.join('?' * len(names))})", names
            elif op == "~":
                sql, args = "instr(lower(coalesce(caption, '')), lower(?)) > 0", [v]
            else:
                sql, args = "coalesce(caption, '') = ?", [v]
            parts.append(Part(f"SELECT id FROM items WHERE {sql}", tuple(args), negate=op == "!="))
        elif f in NUMBER_FIELDS:
            if op == "~":
                raise FilterError(f"where {c}: {f} is a number; use = != < <= > >=")
            column = {"mtime": "mtime_ns"}.get(f, f)
            if f == "mtime":
                start, end = _time(c)
                if end is not None and op in ("=", "!=", "<=", ">"):  # a whole day
                    sql, args = {"=": (f"({column} >= ? AND {column} < ?)", [start, end]),
                                 "!=": (f"({column} >= ? AND {column} < ?)", [start, end]),
                                 "<=": (f"{column} < ?", [end]), ">": (f"{column} >= ?", [end])}[op]
                    lo, hi = {"=": (start, end - 1), "!=": (None, None), "<=": (None, end - 1), ">": (end, None)}[op]
                    ranges.add(c, lo, hi)
                    parts.append(Part(f"SELECT id FROM items WHERE {sql}", tuple(args), negate=op == "!="))
                    continue
                value = start
            else:
                value = _size(c) if f == "size" else _number(c)
            _bounds(op, value, ranges, c)
            parts.append(Part(f"SELECT id FROM items WHERE {column} {'=' if op == '!=' else op} ?", (value,),
                              negate=op == "!="))
        else:
            if f not in kinds:
                known = ", ".join(sorted(kinds)[:20]) or "none"
                raise FilterError(f"where {c}: {f!r} is not a field of this index (built in: "
                                  f"{', '.join(BUILT_IN)}; its own: {known})")
            select = "SELECT id FROM item_fields WHERE name = ? AND "
            if op in ("=", "!="):  # the text, or the number (3 and 3.0 are one value); each by its own index
                n = metadata.number(v)
                query, args = (f"{select}text = ? UNION ALL {select}num = ?", [f, v, f, n]) if n is not None else \
                    (f"{select}text = ?", [f, v])
                if op == "=" and n is not None:
                    _bounds("=", n, ranges, c)
            elif op == "~":
                query, args = f"{select}instr(lower(text), lower(?)) > 0", [f, v]
            else:
                if not kinds[f]:
                    raise FilterError(f"where {c}: {f} holds no numbers in this index; use = != ~")
                n = _number(c)
                _bounds(op, n, ranges, c)
                query, args = f"{select}num {op} ?", [f, n]
            parts.append(Part(query, tuple(args), negate=op == "!="))
    ranges.check()
    return parts


class RowCache:
    """The rows a filter leaves, kept for the last few filters of one state of the index (its generation and
    fields generation): a page and the next, or one filter under many queries, run the SQL once."""

    def __init__(self, size: int = 32):
        self.size, self.entries, self.lock = size, OrderedDict(), threading.Lock()

    def rows(self, store, conditions: tuple[Condition, ...], view: tuple) -> np.ndarray:
        """`view`: (row -> item id, generation) of the engine the rows are for."""
        key = (view[1], store.get("fields_generation"), conditions)
        with self.lock:
            if key in self.entries:
                self.entries.move_to_end(key)
                return self.entries[key]
        rows = matching_rows(store, conditions, view[0])
        with self.lock:
            self.entries[key] = rows
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        return rows


def _ids(db, part: Part) -> np.ndarray:
    """The sorted item ids where a part's predicate holds: one SQL query over an index, read as one text."""
    (found,) = db.execute(f"SELECT group_concat(id) FROM ({part.query})", part.params).fetchone()
    ids = np.fromstring(found, dtype=np.int64, sep=",") if found else np.zeros(0, dtype=np.int64)
    return np.unique(ids)  # sorted; an item with several matching values counted once


def matching_rows(store, conditions: tuple[Condition, ...], row_to_id: np.ndarray) -> np.ndarray:
    """The sorted vector rows (of those `row_to_id` maps to an item) of the items meeting every condition."""
    rows = np.flatnonzero(row_to_id >= 0)
    ids = row_to_id[rows]
    order = np.argsort(ids)
    live, rows_by_id = ids[order], rows[order]

    def select(db):
        if not metadata.has_fields(db):
            raise FilterError(f"{store.path}: this index was built before filters; run `dualtower index` on it "
                              "again to keep what filters need")
        return [(part, _ids(db, part)) for part in compile_parts(conditions, metadata.field_kinds(db))]

    keep = live
    for part, ids in store.read(select):
        keep = np.setdiff1d(keep, ids, assume_unique=True) if part.negate else \
            np.intersect1d(keep, ids, assume_unique=True)
    return np.sort(rows_by_id[np.searchsorted(live, keep)])
