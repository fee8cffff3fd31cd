"""A source's records made ready for an index: decoded, hashed, thumbnailed and transformed (or the reason each is
bad), by the local build's loader workers or by a shard task's threads under a time limit."""

from __future__ import annotations

import hashlib
import io as _io
import logging
import os
import queue
import threading
import time
from collections import Counter
from pathlib import Path

from PIL import Image

from ..data import BadSample
from ..data.files import IMAGE_SUFFIXES, not_utf8
from ..images import white_rgb
from .dedupe import hashes

THUMB_SIDE = 192

log = logging.getLogger("dualtower.search")


def listing(source, skipped: Counter):
    """(index, key, file) of each record an index can hold, in order; the others counted in `skipped` by reason: a
    name that is not UTF-8 (the index keeps text) and a key an earlier record had."""
    seen: set[str] = set()
    for i in range(len(source)):
        key, file = source.origin(i)
        if not_utf8(key) or (file is not None and not_utf8(file)):
            shown = os.fsencode(file or key).decode("utf-8", "backslashreplace")
            log.warning("skipped %s: its name is not UTF-8", shown)
            skipped["file name is not UTF-8"] += 1
            continue
        if key in seen:
            skipped["same image as an earlier record"] += 1
            continue
        seen.add(key)
        yield i, key, file


def stat(file: str | None) -> tuple[int | None, int | None]:
    """(size, mtime_ns) of a record's file, by which an update sees it changed; (None, None) without one."""
    if file is None:
        return None, None
    try:
        st = os.stat(file)
    except OSError:
        return None, None
    return st.st_size, st.st_mtime_ns


def thumbnail(image: Image.Image) -> Image.Image:
    """An RGB thumbnail of at most THUMB_SIDE a side, a new image (the original is left as it is: it is embedded
    next). A large image is first cut down cheaply to about twice the thumbnail (Pillow's integer-factor
    reduce, or nearest-neighbour for palette images), so memory follows the thumbnail, not the original (a
    100-megapixel PNG was composited at full size)."""
    factor = min(image.width, image.height) // (2 * THUMB_SIDE)
    if factor >= 2:
        size = (max(1, image.width // factor), max(1, image.height // factor))
        try:
            image = image.resize(size, Image.NEAREST) if image.mode in ("P", "1", "PA") else image.reduce(factor)
        except ValueError:  # a mode reduce does not take (16-bit, ...)
            image = image.resize(size, Image.NEAREST)
    image = white_rgb(image.convert("RGBA") if image.mode in ("P", "PA") else image)
    small = image.copy() if image.mode == "RGB" and factor < 2 else image  # thumbnail() works in place
    small.thumbnail((THUMB_SIDE, THUMB_SIDE))
    return small


def sample_and_thumbnail(transform, image: Image.Image) -> tuple:
    """(`transform`'s sample of `image`, its thumbnail). The thumbnail is made from the transform's own resize of
    the whole picture (`ImageTransform.sample_and_view`) where that is smaller than the original (never an
    upscale) and at least the thumbnail's size, else from the original: from the resize it costs about a tenth
    (0.2 against 1.3 ms for a 640 px photo), resized twice, each time with an antialiasing filter."""
    sample, view = transform.sample_and_view(image)
    scale = min(THUMB_SIDE / image.width, THUMB_SIDE / image.height, 1.0)  # the thumbnail's, from the original
    fits = view is not None and image.width * scale <= view.width <= image.width \
        and image.height * scale <= view.height <= image.height
    return sample, thumbnail(view if fits else image)


class Records:
    """Item k: record todo[k] decoded, hashed, thumbnailed and transformed by the runtime's `transform` (or the
    reason it is bad); a map-style dataset the runtime's `map` reads with loader processes or threads."""

    def __init__(self, source, todo: list[tuple], transform):
        self.source, self.todo, self.transform = source, todo, transform

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, k: int) -> dict:
        index, key, file, size, mtime = self.todo[k]
        # The image's own file is served by /image/{id}; a record inside a tar shard has none of its own.
        own = file is not None and Path(file).suffix.lower() in IMAGE_SUFFIXES
        out = {"key": key, "path": os.path.abspath(file) if own else None, "size": size, "mtime_ns": mtime}
        try:
            out["fields"] = self.source.fields(index)
            sample = self.source.load(index)
            image = sample.image
            if file is not None:
                digest = hashlib.sha256()
                with open(file, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        digest.update(chunk)
                out["sha256"] = digest.hexdigest()
            else:
                out["sha256"] = hashlib.sha256(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()
            pixels, small = sample_and_thumbnail(self.transform, image)
            buffer = _io.BytesIO()
            small.save(buffer, format="JPEG", quality=85)
            out["phash"] = hashes(small)  # near-duplicates (dedupe.py): the thumbnail keeps what the hash reads
            out.update(pixels=pixels, width=image.width, height=image.height,
                       caption=sample.caption or None, thumb=buffer.getvalue())
        except BadSample as e:
            out.update(bad=e.reason, detail=e.detail or key)
        except Exception as e:  # one bad record must never stop a run: count it and go on
            out.update(bad="error", detail=f"{key}: {type(e).__name__}: {e}")
        return out


DECODE_SECONDS = 60.0  # a record whose reading and decoding take longer is skipped ("decoding timed out")


def prepare_all(records: Records, threads: int = 2, deadline_s: float = DECODE_SECONDS) -> list[dict]:
    """Every item of `records`, in order, prepared by `threads` daemon threads (Pillow and hashing release the GIL).
    An item not done `deadline_s` after its thread took it is reported bad; its thread is left behind (a decoder
    cannot be interrupted) and a new one takes its place, so a hanging file costs one thread, never the task."""
    n = len(records)
    out: list = [None] * n
    started: list = [None] * n
    done = [threading.Event() for _ in range(n)]
    todo: queue.Queue = queue.Queue()
    for k in range(n):
        todo.put(k)

    def work() -> None:
        while True:
            try:
                k = todo.get_nowait()
            except queue.Empty:
                return
            started[k] = time.monotonic()
            out[k] = records[k]
            done[k].set()

    def spawn() -> None:
        threading.Thread(target=work, daemon=True, name="dualtower-decode").start()

    for _ in range(max(1, min(threads, n))):
        spawn()
    for k in range(n):
        while not done[k].wait(0.05):
            if started[k] is not None and time.monotonic() - started[k] > deadline_s:
                index, key, _file, size, mtime = records.todo[k]
                out[k] = {"key": key, "size": size, "mtime_ns": mtime, "bad": "decoding timed out",
                          "detail": f"{key}: not read and decoded within {deadline_s:g} s"}
                done[k].set()
                spawn()  # the stuck thread keeps its item; the rest go on
    return out
