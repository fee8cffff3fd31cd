"""Runtimes: one Embedder protocol (`base`), one module per runtime (`pytorch`, `onnx`), a factory above them.

    embedder = dualtower.runtimes.open("ckpt", runtime="torch", device="cpu", precision="bf16")
    embedder.embed_images([PIL images]) -> (N, E) float32, L2-normalised
    embedder.embed_texts(["a photo of a cat"]) -> (N, E)
    embedder.identity() -> name, config, fp32 weights digest, source

Zero-shot classification, source embedding, index building, search and serving take an Embedder (or a
DualEncoder, wrapped by `as_embedder`). A new runtime is one new module with an Embedder subclass and an
`open(spec, options)`, named in RUNTIMES.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UserError
from .base import Embedder, length_batches, normalize

RUNTIMES = {"torch": "pytorch", "onnx": "onnx", "openvino": "openvino"}  # --runtime name -> module in this package
CHOICES = (*RUNTIMES, "auto")  # auto: the fastest of them that runs the model (fastest.py)


@dataclass(frozen=True)
class OpenOptions:
    """How a command opens its model. torch: device ("auto": a CUDA GPU when there is one), precision, and for a
    checkpoint that needs them arch, source (its format) and towers; `note` hears what the user should know
    (random weights). onnx: `service=True` for a process answering a few queries at a time."""

    device: str = "auto"
    precision: str = "fp32"
    arch: str | None = None
    source: str | None = None
    towers: str | None = None
    language: str | None = None  # NLLB's tokenizer: the language tag before each text (tokenizers.get_tokenizer)
    service: bool = False
    note: Callable[[str], None] | None = None


def open(spec: str, runtime: str = "torch", options: OpenOptions | None = None) -> Embedder:  # noqa: A001
    """The Embedder of `spec` (a checkpoint, Hub name or architecture name for torch; an export folder for onnx and
    openvino) on `runtime`, or on the fastest that runs it for "auto"."""
    if runtime not in CHOICES:
        raise UserError(f"runtime {runtime!r} is not one of {', '.join(CHOICES)}")
    options = options or OpenOptions()
    module = importlib.import_module(f".{RUNTIMES.get(runtime, 'fastest')}", __name__)
    embedder = module.open(spec, options)
    embedder.language = options.language
    return embedder


def runtime_of(spec: str) -> str:
    """The runtime a model spec is for: "onnx" or "openvino" for a folder `dualtower export` wrote for one, else
    "torch" (checkpoints, Hub names, architecture names)."""
    import json
    from pathlib import Path

    from ..export_format import FORMAT_NAME

    try:
        meta = json.loads((Path(spec) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "torch"
    exported = isinstance(meta, dict) and meta.get("format") == FORMAT_NAME
    return meta["runtime"] if exported and meta.get("runtime") in ("onnx", "openvino") else "torch"


def as_embedder(model) -> Embedder:
    """An Embedder as it is; a DualEncoder wrapped, on its own device and precision."""
    if isinstance(model, Embedder):
        return model
    from .pytorch import TorchEmbedder

    return TorchEmbedder(model)


__all__ = ["CHOICES", "RUNTIMES", "Embedder", "OpenOptions", "as_embedder", "length_batches", "normalize", "open", "runtime_of"]
