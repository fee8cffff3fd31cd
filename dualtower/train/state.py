"""Training checkpoints: the model in our format plus everything needed to continue exactly.

`OUT/checkpoints/step_000100/` holds config.json + model.safetensors (a normal checkpoint `dualtower.load`
reads), `train_config.json`, and `train_state.pt` with the optimizer, the step, every random generator's
state and the data accounting. The data position is the step itself (batches are a function of the step).
`OUT/checkpoints/latest` names the newest complete checkpoint; every file is written atomically, so a kill at
any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import CheckpointError, atomic_directory, atomic_file, load, write_files
from ..model import DualEncoder

LATEST = "latest"


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


def save_training(out: Path, step: int, model: DualEncoder, optimizer, extra: dict, train_config: dict,
                  keep: int) -> Path:
    root = out / "checkpoints"
    directory = root / f"step_{step:06d}"
    with atomic_directory(directory) as tmp:
        write_files(model, tmp)
        (tmp / "train_config.json").write_text(json.dumps(train_config, indent=2) + "\n")
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "rng": rng_state(), **extra},
                   tmp / "train_state.pt")
    with atomic_file(root / LATEST) as tmp:
        tmp.write_text(directory.name + "\n")
    old = sorted(p for p in root.glob("step_*") if p.is_dir() and p != directory)
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return directory


def find_checkpoint(path: Path) -> Path:
    """A run directory (its latest checkpoint) or a checkpoint directory."""
    if (path / "train_state.pt").is_file():
        return path
    latest = path / "checkpoints" / LATEST
    if latest.is_file():
        directory = path / "checkpoints" / latest.read_text().strip()
        if (directory / "train_state.pt").is_file():
            return directory
    raise CheckpointError(f"{path}: no training checkpoint to resume (expected checkpoints/latest or train_state.pt)")


def load_training(directory: Path) -> tuple[DualEncoder, dict]:
    """The model and the training state (optimizer, step, random generators, data accounting) of a checkpoint;
    its config is read by `loop.resume_config`."""
    model = load(directory)
    try:
        state = torch.load(directory / "train_state.pt", map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{directory / 'train_state.pt'}: unreadable ({e})") from e
    return model, state
