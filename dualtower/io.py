"""Atomic writes: a file or a directory is either the old one or the new one, whole, whatever kills the writer.

Every module that publishes a file (checkpoints, embeddings, eval results, plots, reports) writes through these.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from .errors import UserError


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@lru_cache(maxsize=1)
def _file_mode() -> int:
    """The mode a newly created file gets here (0666 less the umask). Writers that create private temporary files
    (safetensors does) would otherwise publish 0600 files beside 0644 ones."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _publishable(path: Path) -> None:
    os.chmod(path, _file_mode())
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _host() -> str:
    import hashlib
    import socket

    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _owner() -> str:
    """This process, as a temporary's name records it: its pid and (hashed) host, so a later run on the same host
    can tell a temporary whose writer died (kill -9, power loss) from one still being written."""
    return f"{os.getpid()}-{_host()}"


def _temporary_name(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{_owner()}-{uuid.uuid4().hex[:8]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def clean_stale(path: Path, every_name: bool = False) -> int:
    """Remove the temporaries a killed writer of `path` left beside it (named by `_temporary_name` on this host by
    a process that no longer runs); the count removed. Every atomic write calls it first, so killed saves of an
    index or an export never pile up; `every_name=True` cleans the temporaries of every name inside the folder
    `path` (a run's checkpoints/, whose saves each have a new name)."""
    import re

    host = _host()
    name = ".+" if every_name else re.escape(path.name)
    pattern = re.compile(rf"\.{name}\.[a-z]+-(\d+)-([0-9a-f]{{8}})-[0-9a-f]{{8}}")
    removed = 0
    try:
        siblings = list((path if every_name else path.parent).iterdir())
    except OSError:
        return 0
    for sibling in siblings:
        found = pattern.fullmatch(sibling.name)
        if found is None or found.group(2) != host or _alive(int(found.group(1))):
            continue
        if sibling.is_dir() and not sibling.is_symlink():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            sibling.unlink(missing_ok=True)
        removed += 1
    if removed:
        import logging

        logging.getLogger("dualtower").info("%s: removed %d temporaries left by killed writers", path, removed)
    return removed


def disk_full(error: BaseException) -> bool:
    """An error that means the device is full (an OSError, or a writer's own error wrapping one)."""
    return (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "No space left on device" in str(error)


@contextmanager
def _naming_full_disk(path: Path):
    """A full device while writing `path` becomes an OSError(ENOSPC) that names `path`, whatever raised it."""
    try:
        yield
    except Exception as e:
        if disk_full(e) and not (isinstance(e, OSError) and e.filename == str(path)):
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from e
        raise


@contextmanager
def atomic_file(path: "str | os.PathLike"):
    """Yields a temporary path beside `path`; on success it is fsynced and renamed over `path`. On any error
    (a full disk included) the temporary file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # `--out out/x.json` with no out/ yet: as `embed` always did
    clean_stale(path)
    tmp = _temporary_name(path, "tmp")
    try:
        with _naming_full_disk(path):
            yield tmp
            _publishable(tmp)
            os.replace(tmp, path)
            fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: "str | os.PathLike", text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: "str | os.PathLike", data) -> None:
    write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")  # NaN is not JSON


@contextmanager
def atomic_directory(path: "str | os.PathLike", replaceable=lambda existing: False):
    """Yields a temporary directory; on success its files are fsynced and it takes the place of `path`.

    An existing `path` is replaced only if it is empty or `replaceable(path)` says so. It is moved aside to a fixed
    name (`.NAME.old`) before the new one is renamed in: a crash between the two renames leaves the old copy
    there, and `recover_directory` (called here first, and by every loader of such directories) puts it back.
    """
    path = Path(path)
    recover_directory(path)
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not replaceable(path))):
        raise FileExistsError(f"{path}: exists and is not a directory this writer may replace; refusing to "
                              "replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = _temporary_name(path, "tmp")
    tmp.mkdir()
    try:
        with _naming_full_disk(path):
            yield tmp
            for f in tmp.iterdir():
                if f.is_file():
                    _publishable(f)
            fsync_dir(tmp)
            old = None
            if path.exists():
                old = _aside(path)
                os.rename(path, old)
            os.rename(tmp, path)
            fsync_dir(path.parent)
            if old is not None:
                shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class Once:
    """What `directory_once` yields: `tmp` to fill; after the block, `committed` says whether it became the path."""

    def __init__(self, tmp: Path):
        self.tmp, self.committed = tmp, False


@contextmanager
def directory_once(path: "str | os.PathLike"):
    """Yields a `Once` whose temporary directory, filled and fsynced, becomes `path` in one rename unless `path`
    already exists (then it is dropped and `committed` stays False): of any number of writers of the same path,
    killed or not, exactly one copy is ever published, whole, and none is replaced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    once = Once(_temporary_name(path, "tmp"))
    once.tmp.mkdir()
    try:
        with _naming_full_disk(path):
            yield once
            if path.exists():
                return
            for f in once.tmp.iterdir():
                if f.is_file():
                    _publishable(f)
            fsync_dir(once.tmp)
            try:
                os.rename(once.tmp, path)  # never onto a published copy: that one is not empty
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                return  # another writer published first
            fsync_dir(path.parent)
            once.committed = True
    finally:
        shutil.rmtree(once.tmp, ignore_errors=True)


def _aside(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def recover_directory(path: "str | os.PathLike") -> bool:
    """Finish what a writer killed inside `atomic_directory` left: the previous copy put back where the new one
    never arrived, a leftover previous copy removed where it did. True when a copy was put back."""
    path = Path(path)
    aside = _aside(path)
    if not aside.is_dir():
        return False
    if path.exists():
        shutil.rmtree(aside, ignore_errors=True)
        return False
    os.rename(aside, path)
    fsync_dir(path.parent)
    return True


def atomic_symlink(link: "str | os.PathLike", target: str) -> bool:
    """Points `link` at `target` (relative) in one rename; False where the filesystem has no symlinks."""
    link = Path(link)
    tmp = _temporary_name(link, "tmp")
    try:
        os.symlink(target, tmp, target_is_directory=True)
    except (OSError, NotImplementedError):
        return False
    try:
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
    fsync_dir(link.parent)
    return True


def read_json(path: "str | os.PathLike") -> dict:
    """A JSON object from a file; ValueError naming the file when it is unreadable or not an object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable JSON file ({e})") from e
    except RecursionError as e:  # thousands of nested brackets: refused, never a crash
        raise UserError(f"{path}: not a readable JSON file (nested too deeply)") from e
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data
