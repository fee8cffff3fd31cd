"""The one interface every data source implements, and the accounting of bad samples.

A source is map-style: `len(source)` records, `source.load(i)` decodes record i into a `Sample` or raises
`BadSample(reason)`. Map-style sources make exact resume a matter of remembering a position, and let loader
workers decode in parallel without changing the order.
"""

from __future__ import annotations

import bisect
import logging
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass

from PIL import Image

from ..errors import DualtowerError

log = logging.getLogger("dualtower.data")


class BadSample(DualtowerError):
    """A record that cannot be used; `reason` is one of a few short names, counted per reason."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass
class Sample:
    image: Image.Image  # in the file's own mode; the transforms make it RGB
    caption: str
    id: str
    label: int = -1  # class index where the source has classes (built-in data), else -1
    image_key: str = ""  # records with the same key show the same image (several captions per image)

    def __post_init__(self):
        self.image_key = self.image_key or self.id


class Source:
    name: str = "source"
    classes: list[str] | None = None  # class names, for sources with labels
    unreadable: tuple | list = ()  # folders that could not be listed (their records were never seen)

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> Sample:
        raise NotImplementedError

    def sample_id(self, index: int) -> str:
        return f"{self.name}:{index}"

    def folders(self) -> list[str]:
        """The folders that hold this source's image files (a search service serves originals from these only)."""
        return []

    def origin(self, index: int) -> tuple[str, str | None]:
        """(key, file): the record's lasting identity in this source, and the file whose size and time say
        whether it changed (None where there is no such file). A search index updates by these."""
        return self.sample_id(index), None

    def fields(self, index: int) -> dict:
        """The record's own metadata, which a search index keeps for filters: a list's other columns, an image's
        JSON sidecar ({} where there is none)."""
        return {}


def require_caption(caption, where: str) -> str:
    """The caption stripped, or BadSample("empty caption") when nothing but whitespace and control characters
    (NUL, escapes) is left."""
    if not isinstance(caption, str) or not "".join(c for c in caption if unicodedata.category(c) != "Cc").strip():
        raise BadSample("empty caption", where)
    return caption.strip()


def caption_if_needed(read, needed: bool) -> str:
    """`read()`'s caption; where captions are not needed (embedding images) a missing or bad one is "" and the
    image is kept."""
    try:
        return read()
    except BadSample:
        if needed:
            raise
        return ""


class SkipStats:
    """Counts of seen, accepted and skipped samples (per reason); logs skips at a bounded rate."""

    def __init__(self, first_per_reason: int = 5, interval_s: float = 30.0):
        self.accepted = 0
        self.skipped: Counter[str] = Counter()
        self.first_per_reason = first_per_reason
        self.interval_s = interval_s
        self._last_summary = 0.0
        self._unlogged = 0

    @property
    def seen(self) -> int:
        return self.accepted + sum(self.skipped.values())

    def add(self, accepted: int, skips: list[tuple[str, str]]) -> None:
        self.accepted += accepted
        for reason, detail in skips:
            self.skipped[reason] += 1
            if self.skipped[reason] <= self.first_per_reason:
                log.warning("skipped a sample (%s): %s", reason, detail)
            else:
                self._unlogged += 1
        now = time.monotonic()
        if self._unlogged and now - self._last_summary >= self.interval_s:
            log.warning("skipped %d more samples since the last report; totals %s", self._unlogged,
                        dict(self.skipped))
            self._unlogged, self._last_summary = 0, now

    def state(self) -> dict:
        return {"accepted": self.accepted, "skipped": dict(self.skipped)}

    def restore(self, state: dict) -> None:
        self.accepted = int(state["accepted"])
        self.skipped = Counter({k: int(v) for k, v in state["skipped"].items()})

    def summary(self) -> str:
        parts = ", ".join(f"{n} {r}" for r, n in sorted(self.skipped.items())) or "none"
        return f"samples seen {self.seen} = accepted {self.accepted} + skipped {sum(self.skipped.values())} ({parts})"


class Joined(Source):
    """Several sources read as one, in order (the files of a brace pattern such as `part-{00..09}.parquet`)."""

    def __init__(self, name: str, parts: list[Source]):
        self.name, self.parts = name, parts
        self.starts, total = [], 0
        for part in parts:
            self.starts.append(total)
            total += len(part)
        self.total = total
        self.unreadable = [u for part in parts for u in part.unreadable]

    def _at(self, index: int) -> tuple[Source, int]:
        if not 0 <= index < self.total:
            raise IndexError(index)
        k = bisect.bisect_right(self.starts, index) - 1
        return self.parts[k], index - self.starts[k]

    def __len__(self) -> int:
        return self.total

    def load(self, index: int) -> Sample:
        part, i = self._at(index)
        return part.load(i)

    def sample_id(self, index: int) -> str:
        part, i = self._at(index)
        return part.sample_id(i)

    def folders(self) -> list[str]:
        return sorted({f for part in self.parts for f in part.folders()})

    def origin(self, index: int) -> tuple[str, str | None]:
        part, i = self._at(index)
        return part.origin(i)

    def fields(self, index: int) -> dict:
        part, i = self._at(index)
        return part.fields(i)
