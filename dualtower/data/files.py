"""Sources on plain files: a captions file (CSV or JSONL) and a folder of images with same-named .txt captions."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import NamedTuple

from ..errors import NotFound, UserError
from ..images import ImageDecodeError, open_image
from .base import BadSample, Sample, Source, caption_if_needed, require_caption

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
IMG2DATASET_IMAGE = "jpg"  # the column img2dataset's Parquet output holds each image's bytes in

log = logging.getLogger("dualtower.data")


def folder_images(folder: Path, unreadable: list | None = None) -> list[Path]:
    """The image files under `folder`, recursively, in a stable order. A sub-folder that cannot be listed (no
    permission) is logged, and added to `unreadable` where given (an index counts it as skipped), never passed
    over in silence."""
    found = []

    def refused(error: OSError) -> None:
        log.warning("%s: cannot be read (%s); its images are skipped", error.filename, error.strerror)
        if unreadable is not None:
            unreadable.append(error.filename)

    for top, dirs, files in os.walk(folder, onerror=refused):
        dirs.sort()
        found += [Path(top) / f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(p for p in found if p.is_file())


def image_paths(items: list[str]) -> list[str]:
    """Files as given, and for each folder the image files inside it; a folder holding none is an error (a command
    given it would otherwise print nothing and succeed)."""
    out = []
    for item in items:
        if Path(item).is_dir():
            found = [str(p) for p in folder_images(Path(item))]
            if not found:
                raise UserError(f"{item}: a folder with no image files in it")
            out += found
        else:
            out.append(item)
    return out


class BadRow(NamedTuple):
    reason: str
    detail: str


def not_utf8(text: str) -> bool:
    """Whether text read with errors="surrogateescape" held bytes that are not UTF-8."""
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _load_image(path: Path):
    if not path.is_file():
        raise BadSample("missing image", str(path))
    try:
        return open_image(path)
    except ImageDecodeError as e:
        raise BadSample("unreadable image", str(e)) from e


class CaptionsFile(Source):
    """Rows of (image path, caption); paths are relative to the file. Column names are configurable; the other
    columns are each record's `fields`. CSV, TSV, JSON lines, or Parquet (with pyarrow installed)."""

    def __init__(self, path: str, image_key: str = "image", caption_key: str = "caption", captions: bool = True):
        self.path, self.captions = Path(path), captions
        self.name = self.path.name
        if not self.path.is_file():
            raise NotFound(f"{path}: no such captions file")
        rows = self._read_rows()
        first = next((r for r in rows if isinstance(r, dict)), None)
        if first is not None and image_key not in first and IMG2DATASET_IMAGE in first:
            image_key = IMG2DATASET_IMAGE  # img2dataset's Parquet output: the image's bytes in its own column
        if first is not None:
            missing = [k for k in (image_key, caption_key) if k not in first]
            if missing:
                raise UserError(f"{path}: no column {missing} (columns: {sorted(first)}); set image_key / "
                                 "caption_key")
        self.rows = [r if isinstance(r, BadRow) else
                     (r.get(image_key), r.get(caption_key),
                      {k: v for k, v in r.items() if k not in (image_key, caption_key) and not isinstance(v, bytes)})
                     for r in rows]

    def _read_rows(self) -> list:
        """Rows as dicts; a row that cannot be read becomes a BadRow (reason, "FILE:LINE: detail"), so the
        rest of the file is used. Bytes that are not UTF-8 spoil only their own row."""
        if self.path.suffix == ".parquet":
            return self._parquet_rows()
        with open(self.path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            if self.path.suffix in (".csv", ".tsv"):
                return self._table_rows(f, "," if self.path.suffix == ".csv" else "\t")
            rows = []
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if not_utf8(line):
                    rows.append(BadRow("row not UTF-8", f"{self.path}:{n}: bytes that are not UTF-8"))
                    continue
                try:
                    row = json.loads(line)
                except (json.JSONDecodeError, RecursionError):
                    row = None
                rows.append(row if isinstance(row, dict) else
                            BadRow("unreadable row", f"{self.path}:{n}: not a JSON object"))
            return rows

    def _parquet_rows(self) -> list[dict]:
        from ..errors import require

        parquet = require("pyarrow.parquet", "a Parquet list", "parquet")
        try:
            table = parquet.read_table(self.path)
        except Exception as e:  # pyarrow's ArrowInvalid and OSError on a file that is not Parquet
            raise UserError(f"{self.path}: not a readable Parquet file ({str(e).splitlines()[0][:200]})") from None
        return table.to_pylist()

    def _table_rows(self, f, delimiter: str) -> list:
        reader = csv.reader(f, delimiter=delimiter)
        header, rows, line = None, [], 0
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return rows
            except csv.Error as e:  # a field past csv's size limit, a NUL byte: this row only
                rows.append(BadRow("unreadable row", f"{self.path}:{line + 1}: {e}"))
                line = reader.line_num
                continue
            at, line = line + 1, reader.line_num
            if header is None:
                if not_utf8("".join(fields)):
                    raise UserError(f"{self.path}:{at}: the header row is not UTF-8")
                header = fields
                continue
            if not fields:
                continue
            if not_utf8("".join(fields)):
                rows.append(BadRow("row not UTF-8", f"{self.path}:{at}: bytes that are not UTF-8"))
            elif len(fields) != len(header):
                rows.append(BadRow("wrong number of fields",
                                   f"{self.path}:{at}: {len(fields)} fields, the header has {len(header)}"))
            else:
                rows.append(dict(zip(header, fields)))

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, index: int) -> Sample:
        row = self.rows[index]
        if isinstance(row, BadRow):
            raise BadSample(row.reason, row.detail)
        image, caption, fields = row
        where = f"{self.path}:{index}"
        caption = caption_if_needed(lambda: require_caption(caption, where), self.captions)
        if isinstance(image, bytes):  # the image itself, in the list (img2dataset's Parquet)
            key = self.origin(index)[0]
            try:
                return Sample(open_image(image, name=f"{where} ({key})"), caption, key, image_key=key)
            except ImageDecodeError as e:
                raise BadSample("unreadable image", str(e)) from e
        if not isinstance(image, str) or not image:
            raise BadSample("missing image", f"{where}: no image" + (f" ({fields['error_message']})"
                                                                       if fields.get("error_message") else ""))
        # The id is the image as the row names it (what `embed` writes beside each vector); the file's row number
        # (sample_id) names a bad row.
        return Sample(_load_image(self.path.parent / image), caption, image, image_key=image)

    def sample_id(self, index: int) -> str:
        return f"{self.name}:{index}"

    def folders(self) -> list[str]:
        return [os.fspath(self.path.parent)]  # its rows name images relative to it

    def origin(self, index: int) -> tuple[str, str | None]:
        row = self.rows[index]
        if not isinstance(row, BadRow) and isinstance(row[0], bytes) and isinstance(row[2].get("key"), str) \
                and row[2]["key"]:
            return f"{self.name}/{row[2]['key']}", None  # an image held in the list: its row's key names it
        image = row[0] if not isinstance(row, BadRow) and isinstance(row[0], str) and row[0] else None
        return (image, os.fspath(self.path.parent / image)) if image else (self.sample_id(index), None)

    def fields(self, index: int) -> dict:
        row = self.rows[index]
        return {} if isinstance(row, BadRow) else row[2]


class ImageFolder(Source):
    """Every image under a folder (recursively) whose caption is the same-named .txt file beside it. With
    `captions=False` (embedding images only) an image whose .txt is missing, empty or unreadable is kept, with an
    empty caption."""

    def __init__(self, root: str, captions: bool = True):
        self.captions = captions
        self.root = Path(root)
        self.name = self.root.name
        if not self.root.is_dir():
            raise NotFound(f"{root}: no such folder")
        self.unreadable = []
        self.images = folder_images(self.root, self.unreadable)

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> Sample:
        path = self.images[index]

        def read() -> str:
            text = path.with_suffix(".txt")
            if not text.is_file():
                raise BadSample("missing caption", str(text))
            try:
                caption = text.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise BadSample("unreadable caption", f"{text}: {e}") from e
            return require_caption(caption, str(text))

        return Sample(_load_image(path), caption_if_needed(read, self.captions), self.sample_id(index))

    def sample_id(self, index: int) -> str:
        return os.fspath(self.images[index].relative_to(self.root))

    def folders(self) -> list[str]:
        return [os.fspath(self.root)]

    def origin(self, index: int) -> tuple[str, str | None]:
        return self.sample_id(index), os.fspath(self.images[index])

    def fields(self, index: int) -> dict:
        """A JSON object beside the image: `photo.json` or `photo.jpg.json` (Google Takeout's). One that cannot
        be read is logged and the image kept without fields."""
        path = self.images[index]
        for sidecar in (path.with_suffix(".json"), path.with_name(path.name + ".json")):
            if sidecar.is_file():
                try:
                    data = json.loads(sidecar.read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
                    log.warning("%s: not a readable JSON sidecar (%s); the image is kept without fields", sidecar,
                                str(e)[:100])
                    return {}
                if not isinstance(data, dict):
                    log.warning("%s: a sidecar must be a JSON object; the image is kept without fields", sidecar)
                    return {}
                return data
        return {}


class ClassFolders(Source):
    """`root/<class name>/<image>`: labelled images for zero-shot and linear-probe evaluation (and training,
    with the caption "a photo of a <class name>"). Class names are the folder names, underscores as spaces."""

    def __init__(self, root: str):
        self.root = Path(root)
        self.name = self.root.name
        if not self.root.is_dir():
            raise NotFound(f"{root}: no such folder")
        folders = sorted(p for p in self.root.iterdir() if p.is_dir())
        if not folders:
            raise UserError(f"{root}: no class folders inside")
        self.classes = [p.name.replace("_", " ") for p in folders]
        self.items = [(p, label) for label, folder in enumerate(folders) for p in folder_images(folder)]

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> Sample:
        path, label = self.items[index]
        return Sample(_load_image(path), f"a photo of a {self.classes[label]}", self.sample_id(index), label=label)

    def sample_id(self, index: int) -> str:
        return os.fspath(self.items[index][0].relative_to(self.root))

    def folders(self) -> list[str]:
        return [os.fspath(self.root)]

    def origin(self, index: int) -> tuple[str, str | None]:
        return self.sample_id(index), os.fspath(self.items[index][0])
