"""Reading and writing the files of foreign formats, without unpickling anything but plain tensors.

`Probe` is what format detection looks at: a directory's config.json, or a state dict file's tensor names
(read once and kept, so detection and conversion read the file one time).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from ..checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointError
from ..errors import unpickling_reason
from ..io import atomic_file, read_json

STATE_DICT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def read_state_file(path: "str | os.PathLike") -> dict:
    """Tensors of a .safetensors file, or of a .bin/.pt/.pth file read without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for foreign objects, RuntimeError for corrupt archives
        raise CheckpointError(
            f"{path}: refused: it cannot be read as plain tensors with torch.load(weights_only=True) "
            f"({unpickling_reason(e)}). dualtower never unpickles "
            "arbitrary objects; convert the file to safetensors in an environment you trust.") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state


def unwrap(state: dict, source: str) -> dict[str, torch.Tensor]:
    """A training checkpoint's `state_dict` entry, with a DistributedDataParallel `module.` prefix removed."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def shard_names(index: Path) -> list[str]:
    """The shard files a sharded checkpoint's index names; each must lie in the index's own folder."""
    try:
        weight_map = read_json(index).get("weight_map", {})
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    names = sorted(set(weight_map.values())) if isinstance(weight_map, dict) else []
    bad = [n for n in names if not isinstance(n, str) or "/" in n or "\\" in n or n.startswith(".")]
    if bad:
        raise CheckpointError(f"{index}: shard names outside its own folder: {bad[:3]}")
    return names


def read_directory_weights(directory: Path) -> dict:
    """The tensors of an HF-style directory: sharded safetensors, model.safetensors or pytorch_model.bin."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        state: dict = {}
        for shard in shard_names(index):
            state.update(read_state_file(directory / shard))
        return state
    for name in (WEIGHTS_FILE, "pytorch_model.bin"):
        if (directory / name).is_file():
            return read_state_file(directory / name)
    raise CheckpointError(f"{directory}: an HF directory without model.safetensors or pytorch_model.bin")


def write_state_file(state: dict[str, torch.Tensor], path: "str | os.PathLike") -> None:
    """`state` written atomically as .safetensors, or with torch.save for .bin/.pt/.pth."""
    path = Path(path)
    if path.suffix not in STATE_DICT_SUFFIXES:
        raise CheckpointError(f"{path}: name the file .safetensors, .bin, .pt or .pth")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, tmp, metadata={"format": "pt"})
        else:
            torch.save(state, tmp)


@dataclass
class Probe:
    """What a path holds, as format detection sees it: a directory's config.json, or a file's state dict."""

    path: Path
    config: dict | None = None  # config.json of a directory
    _state: dict | None = field(default=None, repr=False)

    @classmethod
    def of(cls, path: Path) -> "Probe":
        if path.is_dir():
            if (path / CONFIG_FILE).is_file():
                try:
                    return cls(path, config=read_json(path / CONFIG_FILE))
                except ValueError as e:
                    raise CheckpointError(str(e)) from e
            if (path / "open_clip_config.json").is_file():  # open_clip's hub layout has no config.json
                return cls(path, config={})
            raise CheckpointError(f"{path}: a directory without {CONFIG_FILE} (or open_clip_config.json) is not a "
                                  "checkpoint")
        if path.suffix not in STATE_DICT_SUFFIXES:
            raise CheckpointError(f"{path}: not a checkpoint directory nor a {'/'.join(STATE_DICT_SUFFIXES)} file")
        return cls(path)

    @property
    def is_directory(self) -> bool:
        return self.config is not None

    @property
    def model_type(self):
        return (self.config or {}).get("model_type")

    def state(self) -> dict:
        """The tensors: a file's state dict (unwrapped), or the weights of an HF-style directory."""
        if self._state is None:
            self._state = (read_directory_weights(self.path) if self.is_directory
                           else unwrap(read_state_file(self.path), str(self.path)))
        return self._state

    @cached_property
    def keys(self) -> frozenset[str]:
        """A file's tensor names (none for a directory), for detection."""
        return frozenset() if self.is_directory else frozenset(self.state())

    def image_processor(self) -> tuple[dict | None, str]:
        """The settings of the image processor saved beside a transformers model, read as transformers reads them
        (image_processing_base.get_image_processor_dict): `processor_config.json`'s nested "image_processor",
        which ProcessorMixin.save_pretrained writes since transformers 5, first; else `preprocessor_config.json`,
        which an image processor saved alone (and every processor before) writes. (None, "") where neither is
        there; a file that is not JSON, or whose settings are not an object, is refused naming it."""
        for name, key in (("processor_config.json", "image_processor"), ("preprocessor_config.json", None)):
            data = self.read_json(name)
            if data is None:
                continue
            if not isinstance(data, dict):
                raise CheckpointError(f"{self.path / name}: not a JSON object")
            if key is not None:
                if key not in data:
                    continue  # an older processor_config.json, holding only the processor's own fields
                data = data[key]
                if not isinstance(data, dict):
                    raise CheckpointError(f"{self.path / name}: {key} is not a JSON object")
            return data, name if key is None else f"{name} ({key})"
        return None, ""

    def read_json(self, name: str) -> dict | None:
        path = self.path / name
        if not path.is_file():
            return None
        try:
            return read_json(path)
        except ValueError as e:
            raise CheckpointError(str(e)) from e


def write_model_directory(dst: "str | os.PathLike", texts: dict[str, "str | bytes"], weights: str,
                          state: dict[str, torch.Tensor]) -> None:
    """A model directory written atomically: small files, text or bytes (the first is its config, whose presence
    marks a folder this writer may replace) and one safetensors file named `weights`."""
    from safetensors.torch import save_file

    from ..io import atomic_directory

    marker = next(iter(texts))
    with atomic_directory(dst, replaceable=lambda d: (d / marker).is_file()) as tmp:
        for name, content in texts.items():
            if isinstance(content, bytes):
                (tmp / name).write_bytes(content)
            else:
                (tmp / name).write_text(content, encoding="utf-8")
        save_file(state, tmp / weights, metadata={"format": "pt"})
