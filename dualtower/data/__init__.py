"""Data sources (one interface; each yields image + caption) and the batch loader."""

from __future__ import annotations

import os

from ..errors import UserError
from .base import BadSample, Sample, SkipStats, Source


def open_source(spec: str, image_key: str = "image", caption_key: str = "caption", captions: bool = True) -> Source:
    """A source from a spec: `builtin:digits`, `builtin:digits:test`, `builtin:fashion-mnist[:test]`,
    a .csv/.tsv/.jsonl/.parquet captions file (its other columns are each record's fields; img2dataset's Parquet
    output with the images inside, `out/{00000..00009}.parquet` for several), a folder of images with .txt
    captions, tar shards (`shards-{0..9}.tar`), or `classes:DIR` (one sub-folder of images per class).
    `captions=False` (embedding images): an image whose caption is missing, empty or unreadable is kept, with an
    empty caption."""
    if spec.startswith("builtin:"):
        from . import builtin

        name, _, split = spec[len("builtin:"):].partition(":")
        split = split or "train"
        if split not in ("train", "test"):
            raise UserError(f"{spec}: split {split!r} is not 'train' or 'test'")
        makers = {"digits": builtin.digits, "fashion-mnist": builtin.fashion_mnist}
        if name not in makers:
            raise UserError(f"{spec}: unknown built-in data; known: {', '.join('builtin:' + n for n in makers)}")
        return makers[name](split)
    if spec.startswith("classes:"):
        from .files import ClassFolders

        return ClassFolders(spec[len("classes:"):])
    if ".tar" in spec:
        from .webdataset import TarShards

        return TarShards(spec, captions=captions)
    if os.path.isdir(spec):
        from .files import ImageFolder

        return ImageFolder(spec, captions=captions)
    if spec.endswith((".csv", ".tsv", ".jsonl", ".parquet")):
        from .files import CaptionsFile

        if "{" in spec:  # a brace pattern of lists (img2dataset's Parquet output: `out/{00000..00099}.parquet`)
            from .base import Joined

            return Joined(os.path.basename(spec), [CaptionsFile(f, image_key=image_key, caption_key=caption_key,
                                                                captions=captions) for f in sharded_files(spec)])
        return CaptionsFile(spec, image_key=image_key, caption_key=caption_key, captions=captions)
    raise UserError(f"{spec}: not a built-in name, classes:DIR, a folder, a .csv/.tsv/.jsonl/.parquet captions file "
                     "or .tar shards")


def sharded_files(spec: str) -> list[str] | None:
    """The files of a sharded spec, each a source of its own (`open_source(file)`): tar shards, or a brace pattern
    of lists (`part-{00..09}.parquet`). None for any other spec. Nothing is read but the names."""
    lists = (".csv", ".tsv", ".jsonl", ".parquet")
    if spec.startswith(("builtin:", "classes:")) or os.path.isdir(spec) or \
            not (".tar" in spec or ("{" in spec and spec.endswith(lists))):
        return None
    from ..errors import NotFound
    from .webdataset import expand_braces

    files = expand_braces(spec)
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise NotFound(f"{spec}: {len(missing)} file(s) not found, e.g. {missing[0]}")
    return files


__all__ = ["BadSample", "Sample", "SkipStats", "Source", "open_source", "sharded_files"]
