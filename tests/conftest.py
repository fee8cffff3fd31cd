"""Shared helpers. Parity tolerance: max |ours - reference| <= 1e-5 x max |reference| (fp32)."""

import os
import warnings

import numpy as np
import pytest
import torch

RTOL = 1e-5

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The commands default to --precision auto, which picks bf16 where this processor makes it faster: the tests compare
# the commands' outputs with fp32 ones, so they pin fp32; tests/test_selfcheck.py tries auto itself.
os.environ["DUALTOWER_PRECISION"] = "fp32"
warnings.filterwarnings("ignore", message="No pretrained weights loaded")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def rel_diff(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| relative to the output scale max |ref|."""
    ours, ref = ours.detach().double(), ref.detach().double()
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float((ours - ref).abs().max() / ref.abs().max())


def assert_close(ours, ref, what: str, rtol: float = RTOL) -> float:
    d = rel_diff(ours, ref)
    assert d <= rtol, f"{what}: relative max difference {d:.3g} > {rtol}"
    return d


CAPTIONS = [
    "a photo of a cat",
    "A diagram of the Krebs cycle, drawn by hand on a whiteboard.",
    "",
    "two dogs playing in the snow 🐕🐕 near a frozen lake",
    "東京の夜景",
    " ".join(["a very long caption that will be truncated"] * 20),
]


@pytest.fixture(scope="session")
def photos():
    """Real photos: scikit-image's bundled ones (several shapes, one grayscale) and scikit-learn's samples."""
    from PIL import Image
    from skimage import data
    from sklearn.datasets import load_sample_images

    arrays = {n: getattr(data, n)() for n in ("astronaut", "coffee", "chelsea", "rocket", "camera", "motorcycle_left")
              if hasattr(data, n)}
    if "motorcycle_left" not in arrays:
        arrays["stereo_left"] = data.stereo_motorcycle()[0]
    arrays.update({f"sklearn_{i}": im for i, im in enumerate(load_sample_images().images)})
    return {n: Image.fromarray(np.asarray(a)) for n, a in arrays.items()}


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory):
    """A small model trained briefly on the digits (shared by the eval, search and export tests): the path of its
    checkpoint. Away from chance and ties: held-out zero-shot top-1 near 0.9."""
    from dualtower import configtree
    from dualtower.train.config import TrainConfig
    from dualtower.train.loop import train

    out = tmp_path_factory.mktemp("trained")
    cfg = configtree.load(TrainConfig, None, ["--train.steps=120", "--train.progress=false", f"--train.out={out}",
                                              "--data.workers=0"])
    return train(cfg)["checkpoint"]


def save_hf(model, path, **kwargs):
    """A transformers model saved as its Hub repository has it: the weights and config, and (for a model with a
    vision tower) its family's image processor for the model's sizes, transformers' defaults otherwise."""
    import transformers
    from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

    model.save_pretrained(path, **kwargs)
    config = model.config
    vision = getattr(config, "vision_config", None) or (config if "vision" in config.model_type else None)
    if vision is None:
        return
    kind = config.model_type
    if kind.startswith(("clip", "metaclip")):
        size = vision.image_size
        processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size=size)
    elif kind.startswith("siglip2"):
        processor = Siglip2ImageProcessorPil(patch_size=vision.patch_size, max_num_patches=vision.num_patches)
    elif kind.startswith("siglip"):
        size = vision.image_size
        processor = transformers.SiglipImageProcessorPil(size={"height": size, "width": size})
    else:
        return  # InternVL's preprocessing is fixed by the family
    processor.save_pretrained(path)
