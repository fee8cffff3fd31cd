"""dualtower: CLIP-style dual-encoder vision-text models.

The public API is here: create_model, load, save, get_config, get_tokenizer, get_transform. One room per job:
config / archs (what a model is, one table), model/ (the towers), tokenizers/ (one module per kind), checkpoint
(our format) and convert/ (every other format, one package per family, through one registry), origin (where a
loaded model came from), runtimes/ (the Embedder protocol: PyTorch and ONNX Runtime), rundir (a training run's
layout), io (atomic writes), data/, train/, eval/, search/, mllm, errors (one base), cli/ and apps/ (demo, smoke)
on top. The README's layout section has the map.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .archs import config_of, get_config, list_architectures
from .config import ModelConfig, PreprocessConfig, TextConfig, VisionConfig

if TYPE_CHECKING:
    from .model import DualEncoder

__version__ = "0.1.0"

# Imported on first use, so that `import dualtower` (and the command line's parsing and help) needs no torch.
_LAZY = {"DualEncoder": "model", "DualEncoderOutput": "model", "ClipTokenizer": "tokenizers",
         "get_tokenizer": "tokenizers"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dualtower' has no attribute {name!r}")


def create_model(name_or_config: "str | ModelConfig", seed: int | None = None) -> "DualEncoder":
    """A model of a named architecture (or a ModelConfig), randomly initialised with open_clip's scheme."""
    import torch

    with torch.random.fork_rng(devices=[], enabled=seed is not None):  # a seed leaves the global generator as it was
        if seed is not None:
            torch.manual_seed(seed)
        from .model import DualEncoder

        model = DualEncoder(config_of(name_or_config))
        model.init_weights()
    return model.eval()


def get_transform(name_or_model="ViT-B-32", max_patches: int | None = None):
    """PIL image -> FloatTensor (3, H, W): the eval preprocessing of an architecture, model or ModelConfig. For a
    NaFlex model (SigLIP 2) -> (patches, grid) at the image's own aspect ratio, at most `max_patches` patches
    (default: the model's budget); `dualtower.naflex.Patches.collate` batches them."""
    from .images import eval_transform

    return eval_transform(config_of(name_or_model).preprocess, max_patches)


def save(model: "DualEncoder", directory) -> None:
    from .checkpoint import save as _save

    _save(model, directory)


def load(path, arch: str | None = None, source: str | None = None, towers: str | None = None) -> "DualEncoder":
    """A model from our checkpoint (or a training run's directory: its latest checkpoint), a transformers
    CLIPModel / SiglipModel / InternVL directory, or a bare state dict (open_clip / OpenAI, timm, InternViT) of
    architecture `arch`. `source` names the format instead of detecting it (`dualtower.convert.names()`);
    `towers="vision"` loads the vision tower alone."""
    from .convert import load as _load

    return _load(path, arch=arch, source=source, towers=towers)


__all__ = [
    "ClipTokenizer", "DualEncoder", "DualEncoderOutput", "ModelConfig", "PreprocessConfig", "TextConfig",
    "VisionConfig", "create_model", "get_config", "get_tokenizer", "get_transform", "list_architectures",
    "load", "save",
]
