"""A run's checkpoints, read and written in one place: where a run starts (fresh, or from a checkpoint: model,
step, optimizer, bookkeeping, random generators), DDP <-> FSDP re-keying of the optimizer state, the weights'
moving average (EMA), and each save (whole by the main process, or sharded by every process; `best` names the
best validation step)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..configtree import to_dict
from ..errors import UserError
from ..model import seeds
from ..rundir import RunDir
from .errors import TrainingError
from .optim import param_groups
from .state import (find_checkpoint, is_sharded, load_by_name, load_sharded, load_training, optimizer_state_by_name,
                    save_sharded, save_training, set_rng_state)

log = logging.getLogger("dualtower.train")


@dataclass
class Resumed:
    directory: Path  # the checkpoint
    state: dict  # its training state: step, optimizer, bookkeeping, random generators, EMA


class Ema:
    """The weights' moving average (train.ema_decay): every floating tensor of the model's state, updated in place
    after each optimizer step as ema = decay * ema + (1 - decay) * weights."""

    def __init__(self, model, decay: float, saved: dict | None = None):
        state = model.state_dict()
        self.decay = decay
        self.tensors = {k: (saved[k].to(v.device) if saved is not None else v.detach().clone())
                        for k, v in state.items() if v.is_floating_point()}
        self._weights = [state[k] for k in self.tensors]  # views of the parameters

    def update(self) -> None:
        torch._foreach_lerp_(list(self.tensors.values()), self._weights, 1.0 - self.decay)


class Checkpointer:
    def __init__(self, run: RunDir, cfg, sharded: bool, resumed: Resumed | None):
        self.run, self.cfg, self.sharded, self.resumed = run, cfg, sharded, resumed
        self._by_name = None

    @property
    def start(self) -> int:
        """The first step to run: 0, or the resumed checkpoint's step."""
        return int(self.resumed.state["step"]) if self.resumed else 0

    @classmethod
    def begin(cls, cfg, resume: str | None, build_model, sharded: bool):
        """(cfg, model, checkpointer): the run's start. Resuming, the model and state come from the checkpoint
        (which names the run directory); fresh, paths become absolute (the saved config resumes from any working
        directory) and `build_model(cfg)` makes the model."""
        if resume:
            directory = find_checkpoint(resume)
            model, state = load_training(directory)
            run = RunDir.of_checkpoint(directory)
            cfg = replace(cfg, train=replace(cfg.train, out=str(run.root)))
            return cfg, model, cls(run, cfg, sharded, Resumed(directory, state))
        cfg = replace(cfg, data=replace(cfg.data, train=_absolute(cfg.data.train)),
                      model=replace(cfg.model, init=_absolute(cfg.model.init)),
                      train=replace(cfg.train, out=os.path.abspath(cfg.train.out)),
                      val=replace(cfg.val, data=_absolute(cfg.val.data),
                                  templates=os.path.abspath(cfg.val.templates) if cfg.val.templates else ""))
        out = Path(cfg.train.out)
        if out.exists() and not out.is_dir():
            raise UserError(f"train.out {cfg.train.out}: exists and is a file, not a run directory")
        return cfg, build_model(cfg), cls(RunDir(out), cfg, sharded, None)

    def before_sharding(self, model, shards: bool) -> None:
        """A whole (DDP) checkpoint resumed sharded: its optimizer state, keyed by parameter position, is re-keyed
        by name on the whole model first (sharded checkpoints are keyed by name already)."""
        r = self.resumed
        if r is not None and shards and not is_sharded(r.directory):
            self._by_name = optimizer_state_by_name(model, param_groups(model, self.cfg.optim.weight_decay),
                                                    r.state["optimizer"])

    def ema(self, model) -> Ema | None:
        decay = self.cfg.train.ema_decay
        if not decay:
            return None
        if self.sharded:
            raise TrainingError("train.ema_decay with train.parallel=fsdp is not supported yet")
        return Ema(model, decay, self.resumed.state.get("ema") if self.resumed else None)

    def restore(self, model, optimizer, runlog, rank: int) -> None:
        """The resumed optimizer state, bookkeeping and random generators; a fresh run seeds its generators."""
        r = self.resumed
        if r is None:
            torch.manual_seed(seeds.process_seed(self.cfg.train.seed, rank))
            return
        if is_sharded(r.directory):  # any number of processes, sharded or not, reads it
            load_sharded(r.directory, model, optimizer)
        elif self._by_name is not None:
            load_by_name(model, optimizer, self._by_name)
        else:
            optimizer.load_state_dict(r.state["optimizer"])
        runlog.restore(r.state)
        set_rng_state(r.state["rng"])

    def save(self, done: int, model, optimizer, runlog, ema: Ema | None, best: bool, d) -> None:
        """The checkpoint of step `done`: sharded, every process writes its shards; whole, the main process."""
        t = self.cfg.train
        runlog.flush()
        if self.sharded:
            save_sharded(self.run, done, model, optimizer, runlog.state() if d.main else None,
                         to_dict(self.cfg) if d.main else None, t.keep_checkpoints, d.main, best)
        elif d.main:
            save_training(self.run, done, model, optimizer, runlog.state(), to_dict(self.cfg), t.keep_checkpoints,
                          ema.tensors if ema is not None else None, best)
        if d.enabled:
            torch.distributed.barrier()


def _absolute(spec: str) -> str:
    """A data spec or checkpoint naming a local path, made absolute; anything else (builtin:, hf-hub:, a
    registry name) as it is."""
    prefix = "classes:" if spec.startswith("classes:") else ""
    path = spec[len(prefix):]
    if not path or ":" in path.split("/")[0] or not (os.path.exists(path) or ".tar" in path):
        return spec
    return prefix + os.path.abspath(path)
