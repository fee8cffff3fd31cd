"""Our checkpoint format, and building a model from a state dict in our parameter names.

A checkpoint is a directory with `config.json` ({"format": "dualtower", "version": 2, "model": ModelConfig}) and
`model.safetensors`, or, written by a sharded (FSDP) training run, `sharded/`: a torch.distributed.checkpoint
folder whose "model.*" entries are the weights (its "optim.*" entries the optimizer state). It is checked
against its config (every key and shape) before any tensor is read. Version 1 (the block fields flat in each
tower) is still read. A run directory stands for its latest checkpoint (see
`rundir`). Foreign formats are read and written by `dualtower.convert`, which ends in `build` here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from . import rundir, sharded
from .config import CONFIG_VERSION, ModelConfig
from .errors import UserError
from .io import atomic_directory, read_json
from .model import DualEncoder
from .origin import tokenizer_files

FORMAT, VERSION, READABLE_VERSIONS = "dualtower", CONFIG_VERSION, (1, CONFIG_VERSION)
CONFIG_FILE, WEIGHTS_FILE, SHARDED_DIR = "config.json", "model.safetensors", "sharded"


class CheckpointError(UserError):
    """A checkpoint is unreadable, unsafe or does not match its config; the message names the file."""


def is_checkpoint(directory: Path) -> bool:
    return (directory / CONFIG_FILE).is_file()


# ------------------------------------------------------------------------------------------------------ writing

def state_of(model: DualEncoder) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def write_files(model: DualEncoder, directory: Path, weights: bool = True,
                state: dict[str, torch.Tensor] | None = None) -> None:
    """config.json and model.safetensors into an existing (temporary) directory (`weights=False`: the config
    alone, for a sharded checkpoint whose processes write the weights themselves; `state`: these tensors instead
    of the model's, e.g. its moving average)."""
    from safetensors.torch import save_file

    meta = {"format": FORMAT, "version": VERSION, "model": model.cfg.to_dict()}
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    if weights:
        tensors = state_of(model) if state is None else {k: v.detach().cpu().contiguous() for k, v in state.items()}
        save_file(tensors, directory / WEIGHTS_FILE, metadata={"format": "pt"})
    for name, path in tokenizer_files(model).items():
        shutil.copyfile(path, directory / name)


def save(model: DualEncoder, directory: "str | os.PathLike") -> None:
    """Write atomically; an existing directory is replaced only if it is a checkpoint (or empty)."""
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or (any(directory.iterdir()) and not is_checkpoint(directory))):
        raise CheckpointError(f"{directory}: exists and is not a checkpoint directory; refusing to replace it")
    with atomic_directory(directory, replaceable=is_checkpoint) as tmp:
        write_files(model, tmp)


# ------------------------------------------------------------------------------------------------------ reading

def read_meta(directory: Path) -> dict:
    try:
        return read_json(directory / CONFIG_FILE)
    except ValueError as e:
        raise CheckpointError(str(e)) from e


def read_config(directory: Path, meta: dict | None = None) -> ModelConfig:
    meta = read_meta(directory) if meta is None else meta
    source = str(directory / CONFIG_FILE)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{source}: not a dualtower checkpoint (format {meta.get('format')!r})")
    if meta.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{source}: format version {meta.get('version')!r} is not supported "
                              f"(readable: {READABLE_VERSIONS})")
    unknown = sorted(set(meta) - {"format", "version", "model"})
    if unknown:
        raise CheckpointError(f"{source}: unknown keys {unknown}")
    try:
        return ModelConfig.from_dict(meta.get("model"), version=meta["version"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: {e}") from e


def read_state(directory: Path, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The tensors of model.safetensors (or of a sharded checkpoint), after the names and shapes its header
    declares are checked against `cfg`."""
    from safetensors import safe_open

    weights = directory / WEIGHTS_FILE
    if not weights.is_file() and sharded.present(directory / SHARDED_DIR):
        return read_sharded_state(directory / SHARDED_DIR, cfg)
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    try:
        with safe_open(weights, framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            check_depths(cfg, shapes, str(weights))  # before a model is built,
            check_shapes(empty_model(cfg), shapes, str(weights))  # and before any tensor is read
            return {k: f.get_tensor(k) for k in f.keys()}
    except CheckpointError:
        raise
    except Exception as e:  # safetensors reports a corrupt header or truncated data this way
        raise CheckpointError(f"{weights}: not a readable safetensors file ({e})") from e


def read_sharded_state(folder: Path, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The full weights of a torch.distributed.checkpoint folder, read in this one process (any number of
    processes may have written it), after its index's names and shapes are checked against `cfg` (read without
    pickle: see `sharded`)."""
    from .sharded import ShardedCheckpointError, dcp_load, tensor_shapes

    try:
        entries = tensor_shapes(folder, "model.")
        shapes = {k: tuple(size) for k, (size, _) in entries.items()}
        check_depths(cfg, shapes, str(folder))
        check_shapes(empty_model(cfg), shapes, str(folder))
        state = {"model": {k: torch.empty(size, dtype=dtype) for k, (size, dtype) in entries.items()}}
        dcp_load(state, folder)
    except ShardedCheckpointError as e:
        raise CheckpointError(str(e)) from None
    except CheckpointError:
        raise
    except Exception as e:  # a damaged data file
        raise CheckpointError(f"{folder}: not a readable sharded checkpoint ({type(e).__name__}: {e})") from e
    return state["model"]


def weights_sha256(model: DualEncoder) -> str:
    """A digest of the model's tensors (names, dtypes, shapes and bytes, in name order): equal for equal weights
    whatever file they came from. A search index records it to refuse queries from another model."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state_of(model).items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load(path: "str | os.PathLike") -> DualEncoder:
    """Our checkpoint directory, or a run directory (its latest checkpoint)."""
    directory = rundir.resolve(path)
    cfg = read_config(directory)
    return build(cfg, read_state(directory, cfg), str(directory / WEIGHTS_FILE))


# ------------------------------------------------------------------------------------- a model from a state dict

def empty_model(cfg: ModelConfig) -> DualEncoder:
    with torch.device("meta"):
        return DualEncoder(cfg)


def check_depths(cfg: ModelConfig, names, source: str) -> None:
    """The number of blocks each tower's weights hold against the config's depth, from the tensor names alone:
    a config that asks for far more blocks than the file has is refused before a model of that size is built."""
    from .config import ConvVisionConfig, HFTextConfig
    from .model.hf_text import ENCODERS

    for prefix, tower in (("visual", cfg.vision), ("text", cfg.text)):
        if tower is None:
            continue
        if isinstance(tower, ConvVisionConfig):  # visual.stages.S.blocks.J.*
            parts = [n.split(".") for n in names if n.startswith("visual.stages.")]
            blocks = {(p[2], p[4]) for p in parts if len(p) > 4 and p[3] == "blocks"}
        else:
            where = f"{prefix}.encoder.{ENCODERS[tower.model_type][1]}." if isinstance(tower, HFTextConfig) else \
                f"{prefix}.transformer.blocks."
            blocks = {n[len(where):].split(".")[0] for n in names if n.startswith(where)}
        if len(blocks) != tower.depth:
            raise CheckpointError(f"{source}: weights do not match the config: the {prefix} tower has "
                                  f"{len(blocks)} blocks in the weights, the config says depth {tower.depth}")


def check_shapes(model: DualEncoder, shapes: dict[str, tuple], source: str) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    wrong = sorted(f"{k} {shapes[k]} (expected {expected[k]})" for k in expected
                   if k in shapes and tuple(shapes[k]) != expected[k])
    problems = [f"missing {missing[:8]}" if missing else "", f"unexpected {extra[:8]}" if extra else "",
                f"wrong shapes {wrong[:8]}" if wrong else ""]
    problems = [p for p in problems if p]
    if problems:
        raise CheckpointError(f"{source}: weights do not match the config: " + "; ".join(problems))


def build(cfg: ModelConfig, state: dict[str, torch.Tensor], source: str) -> DualEncoder:
    """A model of `cfg` holding `state` (our names; every key and shape checked), in eval mode, fp32. The
    tensors are moved out of `state`, which is left empty."""
    check_depths(cfg, state, source)
    model = empty_model(cfg)
    check_shapes(model, {k: tuple(v.shape) for k, v in state.items()}, source)
    expected = model.state_dict()
    wrong = [f"{k} ({v.dtype})" for k, v in state.items() if expected[k].is_floating_point()
             and not v.is_floating_point()]
    if wrong:
        raise CheckpointError(f"{source}: integer or boolean tensors where weights are floats: {wrong[:3]}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{source}: {len(bad)} tensor(s) hold NaN or infinite values, e.g. {bad[:3]}")
    # Taken out of `state` one by one, so a tensor that has to be copied is freed before the next is.
    model.load_state_dict({k: _aligned(state.pop(k)) for k in list(state)}, assign=True)
    if hasattr(model.text, "fill_buffers"):  # a transformers encoder's buffers are in no state dict
        model.text.fill_buffers()
    return model.eval()


def _aligned(tensor: torch.Tensor) -> torch.Tensor:
    """fp32 (floats) in memory torch allocated, 64-byte aligned. A tensor read from a file can sit at any 8-byte
    offset, and matrix products round differently on memory of another alignment: a model loaded from a
    checkpoint must compute what the model that saved it did, bit for bit (an exact resume)."""
    tensor = tensor.float() if tensor.is_floating_point() else tensor
    return tensor if tensor.data_ptr() % 64 == 0 else tensor.clone()
