"""dualtower: CLIP-style dual-encoder vision-text models."""

from .archs import config_of, get_config, list_architectures
from .config import ModelConfig, PreprocessConfig, TextConfig, VisionConfig
from .model import DualEncoder, DualEncoderOutput
from .tokenizer import ClipTokenizer, get_tokenizer

__version__ = "0.1.0"


def create_model(name_or_config: "str | ModelConfig", seed: int | None = None) -> DualEncoder:
    """A model of a named architecture (or a ModelConfig), randomly initialised with open_clip's scheme."""
    import torch

    with torch.random.fork_rng(devices=[], enabled=seed is not None):  # a seed leaves the global generator as it was
        if seed is not None:
            torch.manual_seed(seed)
        model = DualEncoder(config_of(name_or_config))
        model.init_weights()
    return model.eval()


def get_transform(name_or_model="ViT-B-32"):
    """PIL image -> FloatTensor (3, H, W): the eval preprocessing of an architecture, model or ModelConfig."""
    from .images import ImageTransform

    return ImageTransform(config_of(name_or_model).preprocess)


def save(model: DualEncoder, directory) -> None:
    from .checkpoint import save as _save

    _save(model, directory)


def load(path, arch: str | None = None) -> DualEncoder:
    """Load our checkpoint directory, an HF CLIPModel directory, or an open_clip / OpenAI state dict (with arch)."""
    from .checkpoint import load as _load

    return _load(path, arch=arch)


__all__ = [
    "ClipTokenizer", "DualEncoder", "DualEncoderOutput", "ModelConfig", "PreprocessConfig", "TextConfig",
    "VisionConfig", "create_model", "get_config", "get_tokenizer", "get_transform", "list_architectures",
    "load", "save",
]
