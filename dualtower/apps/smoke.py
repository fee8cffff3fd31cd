"""A smoke run: a small random model encodes real sample photos and a few captions; prints the similarity table.

The weights are random, so the numbers mean nothing; the run shows the whole path (decode, preprocess,
tokenize, both towers, scaled cosine similarity) working end to end.
"""

from __future__ import annotations

import time

import torch

CAPTIONS = ["a photo of a temple", "a photo of a flower", "a photo of a cat", "a cup of coffee"]


def sample_photos() -> dict[str, "object"]:
    """scikit-learn's bundled sample photos (china.jpg, flower.jpg) as PIL images, by file name."""
    try:
        from sklearn.datasets import load_sample_images
    except ImportError as e:
        raise RuntimeError("the sample photos come with scikit-learn: pip install scikit-learn") from e
    from pathlib import Path

    from ..images import open_image

    return {Path(p).name: open_image(p) for p in load_sample_images().filenames}


def run(arch: str = "tiny", seed: int = 0) -> torch.Tensor:
    import dualtower

    start = time.perf_counter()
    model = dualtower.create_model(arch, seed=seed)
    transform, tokenizer = dualtower.get_transform(model), dualtower.get_tokenizer(model)
    photos = sample_photos()
    pixels = torch.stack([transform(im) for im in photos.values()])
    with torch.inference_mode():
        out = model(pixels, tokenizer(CAPTIONS))
    probs = out.logits_per_image.softmax(dim=-1)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"architecture {arch}: {n_params / 1e6:.1f}M parameters, random weights (seed {seed})")
    print(f"{'image':<14}" + "".join(f"{c[:22]:>24}" for c in CAPTIONS))
    for name, row in zip(photos, probs):
        print(f"{name:<14}" + "".join(f"{p:>24.3f}" for p in row.tolist()))
    print(f"softmax over captions per image; cosine similarities x logit scale {float(out.logit_scale):.2f}; "
          f"{time.perf_counter() - start:.1f}s")
    return probs
