"""Training checkpoints: the model in our format plus everything needed to continue exactly.

A run's step directory (see `rundir`) holds config.json + model.safetensors (a normal checkpoint
`dualtower.load` reads), `train_config.json`, and `train_state.pt` with the optimizer, the step, every random
generator's state and the bookkeeping. A sharded (FSDP) run writes `sharded/` instead of model.safetensors and
the optimizer: torch.distributed.checkpoint's folder (read and written without pickle: `sharded`), every process writing its own shards, readable by any
number of processes (a resume on another world size) and by `dualtower.load` in one. The data position is the
step itself (batches are a function of the step). Every file is written atomically and `latest` moves only to a
complete checkpoint, so a kill at any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from .. import rundir, sharded
from ..checkpoint import SHARDED_DIR, CheckpointError, is_checkpoint, load, write_files
from ..io import atomic_directory
from ..model import DualEncoder
from ..sharded import dcp_load, dcp_save

TRAIN_STATE, TRAIN_CONFIG, EMA_DIR = "train_state.pt", "train_config.json", "ema"


def rng_state() -> dict:
    state = {"torch": torch.random.get_rng_state(), "python": list(random.getstate()[1]),
             "python_pos": random.getstate()[2], "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
             "numpy_pos": int(np.random.get_state()[2])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.random.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training(run: rundir.RunDir, step: int, model: DualEncoder, optimizer, extra: dict, train_config: dict,
                  keep: int, ema: dict[str, torch.Tensor] | None = None, best: bool = False) -> Path:
    """`ema`: the weights' moving average, written as a checkpoint of its own in `ema/` (any command that takes
    a model takes RUN/checkpoints/latest/ema)."""
    directory = run.step(step)
    with atomic_directory(directory, replaceable=is_checkpoint) as tmp:
        write_files(model, tmp)
        if ema is not None:
            (tmp / EMA_DIR).mkdir()
            write_files(model, tmp / EMA_DIR, state=ema)
        (tmp / TRAIN_CONFIG).write_text(json.dumps(train_config, indent=2) + "\n")
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "rng": rng_state(), **extra},
                   tmp / TRAIN_STATE)
    run.publish(directory, keep, best)
    return directory


def save_sharded(run: rundir.RunDir, step: int, model: DualEncoder, optimizer, extra: dict | None,
                 train_config: dict | None, keep: int, main: bool, best: bool = False) -> Path:
    """Called by every process: each writes its shards of the weights and the optimizer state into the folder the
    main process made; the main process adds the config, the training state and the run's config, then
    publishes the folder as step N atomically (a kill before that leaves the previous checkpoint as it was)."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import get_state_dict

    directory = run.step(step)
    model_state, optim_state = get_state_dict(model, optimizer)
    if not main:
        folder = [None]
        dist.broadcast_object_list(folder, src=0)
        dcp_save({"model": model_state, "optim": optim_state}, Path(folder[0]))
        dist.barrier()  # the main process publishes after this
        return directory
    with atomic_directory(directory, replaceable=is_checkpoint) as tmp:
        folder = [str(tmp / SHARDED_DIR)]
        if dist.is_initialized():
            dist.broadcast_object_list(folder, src=0)
        dcp_save({"model": model_state, "optim": optim_state}, Path(folder[0]))
        if dist.is_initialized():
            dist.barrier()  # every process's shards are in
        write_files(model, tmp, weights=False)
        (tmp / TRAIN_CONFIG).write_text(json.dumps(train_config, indent=2) + "\n")
        torch.save({"step": step, "rng": rng_state(), **extra}, tmp / TRAIN_STATE)
    run.publish(directory, keep, best)
    return directory


def load_sharded(directory: Path, model: DualEncoder, optimizer) -> None:
    """The weights and optimizer state of a sharded checkpoint into `model` and `optimizer`, sharded or not, on
    however many processes (torch.distributed.checkpoint reshards)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)  # the layout to fill (optimizer state included)
    state = {"model": model_state, "optim": optim_state}
    dcp_load(state, directory / SHARDED_DIR)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def optimizer_state_by_name(model: DualEncoder, groups: list[dict], saved: dict) -> dict:
    """torch's optimizer state_dict (state keyed by parameter position in `groups`) keyed by parameter name,
    whole tensors: what `load_by_name` puts into the optimizer of a sharded copy of `model`."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    whole = torch.optim.AdamW(groups)
    whole.load_state_dict(saved)
    return get_optimizer_state_dict(model, whole, options=StateDictOptions(full_state_dict=True))


def load_by_name(model: DualEncoder, optimizer, by_name: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def is_sharded(directory: Path) -> bool:
    return sharded.present(directory / SHARDED_DIR)


def find_checkpoint(path: "str | Path") -> Path:
    """A training checkpoint: the one given, or the latest of a run directory."""
    directory = rundir.resolve(path)
    if not (directory / TRAIN_STATE).is_file():
        raise CheckpointError(f"{path}: no training checkpoint to resume (expected a run directory with "
                              f"checkpoints/latest, or a checkpoint with {TRAIN_STATE})")
    return directory


def load_training(directory: Path) -> tuple[DualEncoder, dict]:
    """The model and the training state (optimizer, step, random generators, bookkeeping) of a checkpoint;
    its config is read by `loop.resume_config`."""
    model = load(directory)
    try:
        state = torch.load(directory / TRAIN_STATE, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's message advises weights_only=False, which would run the pickle's code
        from ..errors import unpickling_reason

        raise CheckpointError(
            f"{directory / TRAIN_STATE}: refused: not a training state that torch.load(weights_only=True) reads "
            f"({unpickling_reason(e)}). dualtower never unpickles arbitrary objects; a training state "
            "it wrote holds only tensors, numbers and strings, so this file was damaged or replaced.") from e
    needed = {"step", "rng"} if is_sharded(directory) else {"step", "optimizer", "rng"}  # sharded: in sharded/
    if not isinstance(state, dict) or not needed <= set(state):
        raise CheckpointError(f"{directory / TRAIN_STATE}: not a training state (no {', '.join(sorted(needed))})")
    if (directory / EMA_DIR).is_dir():  # the moving average of the weights, a checkpoint of its own
        from ..checkpoint import read_state

        state["ema"] = read_state(directory / EMA_DIR, model.cfg)
    return model, state


def saved_config(directory: Path) -> dict:
    return json.loads((directory / TRAIN_CONFIG).read_text())
