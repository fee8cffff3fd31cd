"""A sharded checkpoint's folder (`sharded/` of a step written by an FSDP run), read and written without pickle.

torch.distributed.checkpoint (DCP) keeps its index in `.metadata`, a plain pickle, and loads non-tensor entries
(the optimizer's hyper-parameters) with `torch.load(weights_only=False)`: PyTorch treats a DCP folder as trusted,
so a hostile run directory would run its code in every command that takes a checkpoint. Here:

1. the index is written as JSON (`metadata.json`), encoded from DCP's own dataclasses and decoded only into an
   allow-list of them (`ALLOWED`), so reading it constructs data and nothing else;
2. a folder written before (`.metadata` only) is read through an unpickler that resolves DCP's metadata classes,
   torch.Size, dtypes and layouts and refuses every other global, before anything else is read;
3. every entry of the data files is read with `torch.load(weights_only=True)`: tensors, numbers, strings,
   tuples, lists and dicts, never an object's constructor;
4. the index's file names are plain names inside the folder (no separator, no `..`).

`dcp_save` / `dcp_load` are DCP's save and load with these reader, writer and planner; everything in dualtower
that touches a sharded folder goes through them.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
from functools import lru_cache
from pathlib import Path

import torch

from .errors import UserError

INDEX, LEGACY_INDEX = "metadata.json", ".metadata"


class ShardedCheckpointError(UserError):
    """A sharded checkpoint folder that is unreadable or unsafe; the message names the file and the reason."""


def present(folder: Path) -> bool:
    """Whether `folder` holds a complete sharded checkpoint (its index is written last)."""
    return (folder / INDEX).is_file() or (folder / LEGACY_INDEX).is_file()


# --------------------------------------------------------------------------------------- the index as JSON

@lru_cache(maxsize=None)
def _allowed() -> dict[str, type]:
    from torch.distributed.checkpoint import filesystem, metadata

    classes = (metadata.Metadata, metadata.TensorStorageMetadata, metadata.BytesStorageMetadata,
               metadata.ChunkStorageMetadata, metadata.TensorProperties, metadata.MetadataIndex,
               metadata.StorageMeta, filesystem._StorageInfo)
    return {c.__name__: c for c in classes}


_TORCH_VALUES = (torch.dtype, torch.layout, torch.memory_format)


def _torch_value(name: str):
    value = getattr(torch, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not isinstance(value, _TORCH_VALUES):
        raise ShardedCheckpointError(f"{name!r} is not a torch dtype, layout or memory format")
    return value


def _encode(x):
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, torch.Size):
        return {"$size": list(x)}
    if isinstance(x, _TORCH_VALUES):
        return {"$torch": str(x).removeprefix("torch.")}
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    if dataclasses.is_dataclass(x) and type(x).__name__ in _allowed():
        return {"$": type(x).__name__, **{f.name: _encode(getattr(x, f.name)) for f in dataclasses.fields(x)}}
    if isinstance(x, tuple):
        return {"$tuple": [_encode(v) for v in x]}
    if isinstance(x, list):
        return [_encode(v) for v in x]
    if isinstance(x, dict):
        return {"$dict": [[_encode(k), _encode(v)] for k, v in x.items()]}
    raise TypeError(f"a sharded checkpoint's index holds a {type(x).__name__}, which dualtower does not write")


def _decode(x):
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, list):
        return [_decode(v) for v in x]
    if not isinstance(x, dict) or (len(x) != 1 and "$" not in x):
        raise ShardedCheckpointError(f"unexpected value {str(x)[:80]!r}")
    if "$" in x:
        fields = dict(x)
        cls = _allowed().get(fields.pop("$"))
        if cls is None:
            raise ShardedCheckpointError(f"unknown record type {x['$']!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        if not set(fields) <= names:
            raise ShardedCheckpointError(f"{cls.__name__} has unknown fields {sorted(set(fields) - names)}")
        return cls(**{k: _decode(v) for k, v in fields.items()})
    (tag, value), = x.items()
    if tag == "$size" and isinstance(value, list) and all(type(v) is int for v in value):
        return torch.Size(value)
    if tag == "$torch":
        return _torch_value(value)
    if tag == "$tuple" and isinstance(value, list):
        return tuple(_decode(v) for v in value)
    if tag == "$dict" and isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 for p in value):
        return {_decode(k): _decode(v) for k, v in value}
    raise ShardedCheckpointError(f"unexpected value {str(x)[:80]!r}")


class _DCPUnpickler(pickle.Unpickler):
    """An older folder's `.metadata`: DCP's metadata classes and torch's value types, nothing else."""

    def find_class(self, module: str, name: str):
        if module in ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem"):
            allowed = dict(_allowed())
            from torch.distributed.checkpoint.metadata import _MEM_FORMAT_ENCODING
            allowed["_MEM_FORMAT_ENCODING"] = _MEM_FORMAT_ENCODING
            if name in allowed and allowed[name].__module__ == module:
                return allowed[name]
        elif module == "torch" and name == "Size":
            return torch.Size
        elif module == "torch":
            return _torch_value(name)
        elif module == "torch.serialization" and name == "_get_layout":
            from torch.serialization import _get_layout
            return _get_layout
        elif module == "pathlib" and name in ("Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"):
            import pathlib
            return getattr(pathlib, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's index")


def read_index(folder: Path):
    """DCP's Metadata of a sharded folder, from `metadata.json`, or from an older folder's `.metadata` through the
    allow-list unpickler; checked: every data file named is a plain file name inside `folder`."""
    from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

    path = folder / INDEX if (folder / INDEX).is_file() else folder / LEGACY_INDEX
    try:
        if path.name == INDEX:
            metadata = _decode(json.loads(path.read_text(encoding="utf-8")))
        else:
            with open(path, "rb") as f:
                metadata = _DCPUnpickler(f).load()
    except FileNotFoundError:
        raise ShardedCheckpointError(f"{folder}: no {INDEX} (not a sharded checkpoint)") from None
    except (ShardedCheckpointError, pickle.UnpicklingError, ValueError, TypeError, EOFError, RecursionError,
            AttributeError, IndexError, KeyError, OSError) as e:
        raise ShardedCheckpointError(f"{path}: refused: not a sharded checkpoint index dualtower reads "
                                     f"({type(e).__name__}: {e})") from None
    if not isinstance(metadata, Metadata) or not isinstance(metadata.state_dict_metadata, dict) \
            or not isinstance(metadata.storage_data, dict):
        raise ShardedCheckpointError(f"{path}: refused: not a sharded checkpoint index")
    for info in metadata.storage_data.values():
        name = getattr(info, "relative_path", None)
        if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name \
                or name != os.path.basename(name):
            raise ShardedCheckpointError(f"{path}: refused: names a data file {name!r} outside its folder")
    if getattr(metadata, "storage_meta", None) is None:
        metadata.storage_meta = StorageMeta()
    return metadata


# --------------------------------------------------------------------------------- DCP's reader, writer, planner

@lru_cache(maxsize=None)
def _classes():
    from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    from .io import write_text

    class Writer(FileSystemWriter):
        """DCP's file-system writer, with the index written as JSON (atomically, last) instead of a pickle."""

        def finish(self, metadata, results) -> None:
            from torch.distributed.checkpoint.filesystem import CURRENT_DCP_VERSION

            metadata.version = CURRENT_DCP_VERSION
            metadata.storage_data = {wr.index: wr.storage_data for wr_list in results for wr in wr_list}
            metadata.storage_meta = self.storage_meta()
            write_text(Path(self.path) / INDEX, json.dumps(_encode(metadata)))

    class Reader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            metadata = read_index(Path(self.path))
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class Planner(DefaultLoadPlanner):
        """DCP's default load planner, reading non-tensor entries with weights_only=True."""

        def load_bytes(self, read_item, value: io.BytesIO) -> None:
            try:
                obj = torch.load(value, weights_only=True)
            except Exception as e:
                from .errors import unpickling_reason

                self.refused = (f"{self.metadata_folder}: refused: entry {read_item.dest_index.fqn!r} is not plain "
                                f"data ({unpickling_reason(e)})")
                raise ShardedCheckpointError(self.refused) from None
            if self.flatten_state_dict:
                from torch.distributed.checkpoint._traverse import (
                    set_element,  # as DefaultLoadPlanner does
                )

                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return Writer, Reader, Planner


def dcp_save(state: dict, folder: Path) -> None:
    """DCP's save of `state` into `folder` (every process calls it), with the index as JSON."""
    import torch.distributed.checkpoint as dcp

    writer, _, _ = _classes()
    dcp.save(state, storage_writer=writer(str(folder)))


def dcp_load(state: dict, folder: Path) -> None:
    """DCP's load into `state` (in place, resharded to its layout), reading nothing that runs code."""
    import warnings

    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    _, reader, planner = _classes()
    read_index(folder)  # refused before any process reads a data file
    p = planner()
    p.metadata_folder, p.refused = folder, None
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, storage_reader=reader(str(folder)), planner=p, no_dist=not dist.is_initialized())
    except CheckpointException as e:  # a BaseException: what each process raised, its traceback as text
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        raise ShardedCheckpointError(p.refused or f"{folder}: not a readable sharded checkpoint "
                                                  f"({lines[-1].strip() if lines else e})") from None


def tensor_shapes(folder: Path, prefix: str) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """name -> (shape, dtype) of the tensor entries under `prefix` ("model."), prefix removed."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    entries = read_index(folder).state_dict_metadata
    return {k[len(prefix):]: (torch.Size(m.size), m.properties.dtype) for k, m in entries.items()
            if k.startswith(prefix) and isinstance(m, TensorStorageMetadata)}
