"""A training run's directory, in one place:

    OUT/metrics.jsonl, OUT/samples.rank{R}.jsonl, OUT/summary.json, OUT/loss.png
    OUT/checkpoints/step_000100/     a checkpoint (config.json, model.safetensors, train_config.json, train_state.pt)
    OUT/checkpoints/latest           -> step_000100 (a symlink; a file naming it where there are no symlinks)
    OUT/checkpoints/best             -> the checkpoint with the best validation metric (val.data), never rotated
                                        away while it is the best

`resolve(path)` turns a run directory, its `checkpoints/` folder or `latest` into the newest complete checkpoint,
so anything that accepts a checkpoint accepts a run too.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

from . import sharded
from .errors import NotFound, UserError
from .io import atomic_symlink, clean_stale, fsync_dir, recover_directory, write_text

CHECKPOINTS, LATEST, BEST = "checkpoints", "latest", "best"
# What makes a step folder a checkpoint: its config and its weights, one file or a sharded checkpoint's index
# (which is written last).
CONFIG, WEIGHTS, SHARDED = "config.json", "model.safetensors", "sharded"
log = logging.getLogger("dualtower.run")


def complete(folder: Path) -> bool:
    return (folder / CONFIG).is_file() and ((folder / WEIGHTS).is_file() or sharded.present(folder / SHARDED))


class RunDir:
    def __init__(self, root: "str | os.PathLike"):
        self.root = Path(root)
        self.checkpoints = self.root / CHECKPOINTS

    @classmethod
    def of_checkpoint(cls, checkpoint: Path) -> "RunDir":
        """The run a step directory belongs to."""
        checkpoint = Path(checkpoint)
        if checkpoint.parent.name != CHECKPOINTS:  # "." or a link: the real path tells
            checkpoint = checkpoint.resolve()
        if checkpoint.parent.name != CHECKPOINTS:
            raise UserError(f"{checkpoint}: not a checkpoint inside a run's {CHECKPOINTS}/ folder")
        return cls(checkpoint.parent.parent)

    def file(self, name: str) -> Path:
        return self.root / name

    def samples_file(self, rank: int) -> Path:
        return self.root / f"samples.rank{rank}.jsonl"

    def step(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:06d}"

    def steps(self) -> list[Path]:
        """The complete checkpoints, oldest first. A step folder without its weights or config (a delete killed
        half-way, by an older version that removed in place) is skipped with a warning."""
        found = []
        for p in sorted(self.checkpoints.glob("step_*")):
            if not p.is_dir() or p.is_symlink():
                continue
            if complete(p):
                found.append(p)
            else:
                log.warning("%s: an incomplete checkpoint (no %s, or no weights); skipped", p, CONFIG)
        return found

    def latest(self) -> Path | None:
        """The checkpoint `latest` names, or None when the run has none yet."""
        return self._named(LATEST)

    def best(self) -> Path | None:
        """The checkpoint `best` names (validation during training), or None."""
        return self._named(BEST)

    def _named(self, name: str) -> Path | None:
        link = self.checkpoints / name
        if link.is_symlink():
            target = self.checkpoints / os.readlink(link)
        elif link.is_file():  # filesystems without symlinks, and runs written before `latest` was one
            target = self.checkpoints / link.read_text().strip()
        else:
            return None
        if target.is_dir() and complete(target):
            return target
        if target.is_dir():
            log.warning("%s: %s is not a complete checkpoint; skipped", link, target.name)
        return None

    def publish(self, checkpoint: Path, keep: int, best: bool = False) -> None:
        """Point `latest` (and with `best`, `best`) at a complete checkpoint, then drop all but the newest `keep`
        and the best."""
        for name in (LATEST, BEST) if best else (LATEST,):
            link = self.checkpoints / name
            if link.is_dir() and not link.is_symlink():
                raise UserError(f"{link}: a directory where the run's {name} link belongs")
            if not atomic_symlink(link, checkpoint.name):
                write_text(link, checkpoint.name + "\n")
        clean_stale(self.checkpoints, every_name=True)  # the saves a kill -9 cut short
        kept = self.best()
        old = [p for p in self.steps() if p != checkpoint and p != kept]
        for p in old[: max(0, len(old) - (keep - 1))]:
            remove_directory(p)
        for p in self.checkpoints.glob(".step_*.deleting-*"):  # what a kill during an earlier removal left
            shutil.rmtree(p, ignore_errors=True)


def remove_directory(path: Path) -> None:
    """Rename away first (one atomic step: from then on it is no checkpoint), then delete: a kill mid-delete
    never leaves a step folder with some of its files."""
    gone = path.with_name(f".{path.name}.deleting-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, gone)
    except FileNotFoundError:
        return
    fsync_dir(path.parent)
    shutil.rmtree(gone, ignore_errors=True)


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def resolve(path: "str | os.PathLike") -> Path:
    """A checkpoint directory as given, or the latest checkpoint of a run directory, its checkpoints/ folder or
    its `latest` link."""
    path = Path(path)
    recover_directory(path)  # a save killed between its two renames: the previous copy is put back
    if path.name == LATEST and path.parent.name == CHECKPOINTS:
        run = RunDir(path.parent.parent)
    elif path.name == CHECKPOINTS and _exists(path / LATEST):
        run = RunDir(path.parent)
    elif _exists(path / CHECKPOINTS / LATEST):
        run = RunDir(path)
    else:
        return path
    latest = run.latest()
    if latest is None:
        raise NotFound(f"{path}: the run's {CHECKPOINTS}/{LATEST} names no complete checkpoint")
    return latest
