"""webdataset tar shards on local disk, indexed once so any sample can be read by offset.

Members are grouped by key (the member path up to the first dot of its file name). A sample uses one image
member (jpg, jpeg, png, webp) and one caption member (txt, or json with a "caption" field). Pickled members
(.pyd, .pth, .pickle, .pkl) are never read. A member whose data runs past the end of a truncated shard is
counted as bad when it is loaded.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from dataclasses import dataclass, field

from ..errors import NotFound, UserError
from ..images import ImageDecodeError, open_image
from .base import BadSample, Sample, Source, caption_if_needed, require_caption

IMAGE_EXT = ("jpg", "jpeg", "png", "webp")
CAPTION_EXT = ("txt", "json")
NEVER_READ = ("pyd", "pth", "pickle", "pkl")


MAX_SHARDS = 100_000


def expand_braces(pattern: str, limit: int = MAX_SHARDS) -> list[str]:
    """`shards-{0000..0099}.tar` -> 100 names (zero padding kept); `{a,b}` lists too. A pattern naming more than
    `limit` shards is refused before anything is expanded."""
    count = _brace_count(pattern)
    if count > limit:
        raise UserError(f"{pattern}: names {count:,} shards, more than the {limit:,} allowed")
    return _expand(pattern)


def _brace_count(pattern: str) -> int:
    count = 1
    for body in re.findall(r"\{([^{}]*)\}", pattern):
        rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
        count *= max(0, int(rng.group(2)) - int(rng.group(1)) + 1) if rng else len(body.split(","))
    return count


def _expand(pattern: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    head, tail, body = pattern[: match.start()], pattern[match.end():], match.group(1)
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.groups()
        width = len(lo) if lo.startswith("0") else 0
        items = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        items = body.split(",")
    return [name for item in items for name in _expand(head + item + tail)]


@dataclass
class _Member:
    offset: int
    size: int


@dataclass
class _Record:
    shard: str
    key: str
    members: dict[str, _Member] = field(default_factory=dict)


class TarShards(Source):
    def __init__(self, pattern: str, captions: bool = True):
        self.name, self.captions = os.path.basename(pattern), captions
        self.shards = expand_braces(pattern)
        missing = [s for s in self.shards if not os.path.isfile(s)]
        if missing:
            raise NotFound(f"{pattern}: {len(missing)} shard(s) not found, e.g. {missing[0]}")
        self.records: list[_Record] = []
        self.truncated_shards: list[str] = []
        for shard in self.shards:
            self._index(shard)

    def _index(self, shard: str) -> None:
        by_key: dict[str, _Record] = {}
        try:
            with tarfile.open(shard, mode="r:") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    directory, base = os.path.split(info.name)
                    if "." not in base:
                        continue
                    stem, ext = base.split(".", 1)
                    if ext.lower() in NEVER_READ:
                        continue
                    key = os.path.join(directory, stem)
                    record = by_key.setdefault(key, _Record(shard, key))
                    record.members[ext.lower()] = _Member(info.offset_data, info.size)
        except (tarfile.TarError, EOFError, OSError):
            self.truncated_shards.append(shard)  # keep what was indexed; short members fail on load
        self.records.extend(by_key.values())

    def __len__(self) -> int:
        return len(self.records)

    def sample_id(self, index: int) -> str:
        r = self.records[index]
        return f"{os.path.basename(r.shard)}/{r.key}"

    def origin(self, index: int) -> tuple[str, str | None]:
        return self.sample_id(index), self.records[index].shard

    def _read(self, record: _Record, ext: str) -> bytes:
        m = record.members[ext]
        with open(record.shard, "rb") as f:
            f.seek(m.offset)
            data = f.read(m.size)
        if len(data) != m.size:
            raise BadSample("truncated tar member", f"{record.shard}: {record.key}.{ext}")
        return data

    def load(self, index: int) -> Sample:
        record = self.records[index]
        where = f"{record.shard}: {record.key}"
        image_ext = next((e for e in IMAGE_EXT if e in record.members), None)
        caption_ext = next((e for e in CAPTION_EXT if e in record.members), None)
        if image_ext is None:
            raise BadSample("missing image", where)

        def read() -> str:
            if caption_ext is None:
                raise BadSample("missing caption", where)
            raw = self._read(record, caption_ext)
            try:
                text = raw.decode("utf-8")
                caption = json.loads(text).get("caption") if caption_ext == "json" else text
            except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, RecursionError) as e:
                raise BadSample("unreadable caption", f"{where}.{caption_ext}: {e}") from e
            return require_caption(caption, f"{where}.{caption_ext}")

        caption = caption_if_needed(read, self.captions)
        try:
            image = open_image(self._read(record, image_ext), name=f"{where}.{image_ext}")
        except ImageDecodeError as e:
            raise BadSample("unreadable image", str(e)) from e
        return Sample(image, caption, self.sample_id(index))
