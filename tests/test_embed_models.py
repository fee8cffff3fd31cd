"""`dualtower embed` on models whose text side the loader cannot serve: a SigLIP model (its tokenizer is not
bundled) and a vision-only InternViT. Batches carry captions; only a consumer that embeds text tokenizes."""

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

import dualtower
from dualtower.archs import get_config
from dualtower.cli import main


def _small(name: str):
    cfg = get_config(name)
    block = dict(width=64, depth=2, heads=4, mlp_dim=128)
    text = replace(cfg.text, vocab_size=300, context_length=12, **block) if cfg.text is not None else None
    return cfg.replace(name=f"small-{name}", embed_dim=64, vision=replace(cfg.vision, image_size=28, patch_size=14,
                       **block), text=text, preprocess=replace(cfg.preprocess, image_size=28))


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    for i, size in enumerate([(40, 30), (28, 28), (50, 20)]):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(images / f"im{i}.png")
        (images / f"im{i}.txt").write_text(f"caption {i}")
    return images


@pytest.mark.parametrize("name", ["ViT-B-16-SigLIP", "InternViT-300M-448px"])
def test_embed_works_without_a_tokenizer(name, folder, tmp_path, capsys):
    model = dualtower.create_model(_small(name), seed=0)
    dualtower.save(model, tmp_path / "ckpt")
    out = tmp_path / "emb.npz"
    assert main(["embed", "--device", "cpu", "--workers", "0", "--model", str(tmp_path / "ckpt"),
                 "--data", str(folder), "--out", str(out)]) == 0
    got = np.load(out)
    assert got["image_embeds"].shape == (3, 64)
    assert np.allclose(np.linalg.norm(got["image_embeds"], axis=1), 1, atol=1e-5)
    # Asking for text embeddings names the reason it cannot be done.
    assert main(["embed", "--device", "cpu", "--workers", "0", "--model", str(tmp_path / "ckpt"),
                 "--data", str(folder), "--out", str(out), "--text"]) == 2
    assert ("own tokenizer" if "SigLIP" in name else "vision-only") in capsys.readouterr().err
