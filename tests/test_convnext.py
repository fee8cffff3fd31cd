"""LAION's ConvNeXt CLIP models (open_clip's convnext_*): parity with open_clip and timm on the same random weights
(max |ours - ref| / max |ref| <= 1e-5, fp32) per config, linear and MLP heads; written back to open_clip and timm
strictly; features per stage, drop path per block, checkpointing, ONNX export; what does not apply is refused."""

import json

import numpy as np
import open_clip
import pytest
import timm
import torch

import dualtower
from dualtower.archs import get_config
from dualtower.config import ModelConfig
from dualtower.errors import UserError

from .conftest import CAPTIONS, assert_close
from .test_mobileclip import _pixels, _state_as, match_open_clip, onnx_matches
from .test_parity_families import perturb

FAST = ["convnext_tiny"]  # a linear head (the MLP head: tiny-convnext against timm, and "_d" in the slow suite)
SLOW = ["convnext_large_d", "convnext_small", "convnext_base", "convnext_base_w", "convnext_base_w_320", "convnext_large",
        "convnext_large_d_320", "convnext_xlarge", "convnext_xxlarge", "convnext_xxlarge_320"]


@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_open_clip_configs_match(name, tmp_path):
    _, _, _, (img, txt, logits) = match_open_clip(name, tmp_path, perturb)
    print(f"{name}: image {img:.2e} text {txt:.2e} logits {logits:.2e}")


def test_preprocessing_is_open_clips_per_config():
    from open_clip.pretrained import get_pretrained_cfg

    for name, tag in [("convnext_base", "laion400m_s13b_b51k"), ("convnext_base_w_320", "laion_aesthetic_s13b_b82k"),
                      ("convnext_large_d_320", "laion2b_s29b_b131k_ft_soup"),
                      ("convnext_xxlarge", "laion2b_s34b_b82k_augreg")]:
        theirs, ours = get_pretrained_cfg(name, tag), get_config(name).preprocess
        assert ours.image_size == get_config(name).vision.image_size
        assert (ours.mean, ours.std, ours.interpolation, ours.resize_mode) == \
            (tuple(theirs.get("mean", open_clip.OPENAI_DATASET_MEAN)),
             tuple(theirs.get("std", open_clip.OPENAI_DATASET_STD)), theirs.get("interpolation", "bicubic"),
             theirs.get("resize_mode", "shortest")), name
        repos = {p.name: p.repo for p in dualtower.archs.ARCHS[name].pretrained}
        assert repos[f"{name}/{tag}"] == theirs["hf_hub"].rstrip("/")


def _timm_tiny(embed: int) -> torch.nn.Module:
    """timm's ConvNeXt at tiny-convnext's size, its head an MLP to `embed` (the "_d" head), bias zero."""
    from timm.models.convnext import ConvNeXt

    model = ConvNeXt(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), num_classes=embed, head_hidden_size=2 * embed)
    perturb(model)
    with torch.no_grad():
        model.head.fc.bias.zero_()
    return model.eval()


def test_timm_state_dicts_both_heads(tmp_path):
    """A bare timm ConvNeXt state dict loads as a vision-only model equal to timm (MLP head, tiny config; linear
    head, convnext_tiny), and is written back to timm strictly, the projection's bias as timm's zeros."""
    embed = get_config("tiny-convnext").embed_dim
    cases = [("tiny-convnext", _timm_tiny(embed), 64)]
    ref = perturb(timm.create_model("convnext_tiny", num_classes=get_config("convnext_tiny").embed_dim))
    with torch.no_grad():
        ref.head.fc.bias.zero_()
    cases.append(("convnext_tiny", ref.eval(), 224))
    for name, ref, size in cases:
        torch.save(ref.state_dict(), tmp_path / "timm.bin")
        ours = dualtower.load(tmp_path / "timm.bin", arch=name)
        assert ours.text is None
        pixels = _pixels(size)
        with torch.no_grad():
            assert_close(ours.encode_image(pixels), ref(pixels), f"{name} image")
        assert set(_state_as(ours, "timm")) == set(ref.state_dict())
        ref.load_state_dict(_state_as(ours, "timm"), strict=True)
    with torch.no_grad():
        cases[0][1].head.fc.bias.fill_(0.1)
    torch.save(cases[0][1].state_dict(), tmp_path / "biased.bin")
    with pytest.raises(Exception, match="head.fc.bias is not zero"):
        dualtower.load(tmp_path / "biased.bin", arch="tiny-convnext")


def test_features_by_stage_refusals_and_nothing_to_fold():
    model = dualtower.create_model("tiny-convnext", seed=0)
    pixels = _pixels(64)
    with torch.no_grad():
        before = model.encode_image(pixels)
        stem, last = model.visual.features(pixels, layers=(0, -1))
        assert torch.equal(model.reparameterize().encode_image(pixels), before)  # nothing to fold: unchanged
    assert stem.shape == (2, 16 * 16, 8) and last.shape == (2, 2 * 2, 32)
    assert not model.cfg.vision.folded
    with pytest.raises(UserError, match="stages 0..4.*by stage, not by block"):
        model.visual.features(pixels, layers=(5,))
    with pytest.raises(UserError, match="patch dropout needs patch tokens"):
        model.visual.set_patch_dropout(0.5)
    with pytest.raises(UserError, match=r"convolutional \(ConvNeXt\)"):
        model.set_dropout(0.1)
    assert model.encode_image(_pixels(96), interpolate_pos=True).shape == (2, model.cfg.embed_dim)


def test_config_round_trips_and_refuses_bad_values():
    cfg = get_config("convnext_large_d_320")
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for change, message in [({"layers": [3, 3]}, "one entry per stage"), ({"folded": True}, "unknown keys.*folded"),
                            ({"kind": "resnet"}, "kind 'resnet' is not one of"), ({"norm_eps": 1.0}, "norm_eps")]:
        data = cfg.to_dict()
        data["vision"].update(change)
        with pytest.raises(UserError, match=message):
            ModelConfig.from_dict(data)


def test_drop_path_per_block_and_checkpointing_train():
    """Drop path rises over the blocks of all stages (0 at the first, the rate at the last) and is keyed per
    sample; gradients reach every parameter and per-stage checkpointing gives the same ones (backward outside
    the keys, as the training loop runs it)."""
    from dualtower.model.convnext import Block
    from dualtower.model.noise import KeyedDropPath, sample_keys

    model = dualtower.create_model("tiny-convnext", seed=0)
    model.set_drop_path(0.2)
    rates = [b.drop_path.prob if isinstance(b.drop_path, KeyedDropPath) else 0.0
             for b in model.visual.modules() if isinstance(b, Block)]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    ids = dualtower.get_tokenizer(model)(CAPTIONS[:4])
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        model.train().set_grad_checkpointing(checkpointing)
        with sample_keys(torch.arange(4)):
            loss = -model(_pixels(64, n=4), ids).logits_per_image.diagonal().mean()
        loss.backward()
        grads.append({k: p.grad.clone() for k, p in model.visual.named_parameters() if p.grad is not None})
    assert set(grads[0]) == {k for k, _ in model.visual.named_parameters()}
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-7), k


@pytest.mark.parametrize("name", ["tiny-convnext", pytest.param("convnext_tiny", marks=pytest.mark.slow)])
def test_onnx_runtime_equals_pytorch(tmp_path, name):
    """fp32 ONNX Runtime within 1e-4 of PyTorch; for convnext_tiny, int8 (dynamic products, static dense
    convolutions) within cosine 0.99."""
    from dualtower import onnx as donnx
    from dualtower.export import export

    model = perturb(dualtower.create_model(name, seed=0)).eval()
    pixels = _pixels(model.cfg.vision.image_size, n=3)
    ref_img = onnx_matches(model, pixels, tmp_path / "fp32")
    if name == "tiny-convnext":
        return
    export(model, tmp_path / "int8", precision="int8")
    int8 = donnx.load(tmp_path / "int8").embed_pixels(pixels.numpy())
    assert float((int8 * ref_img).sum(axis=1).min()) >= 0.99
    assert np.isfinite(int8).all()


def test_plan_and_archs_describe_it(capsys):
    from dualtower.cli import main

    assert main(["plan", "convnext_base", "--gpus", "8", "--batch", "1024"]) == 0
    out = capsys.readouterr().out
    assert "convnext_base" in out
    assert main(["archs"]) == 0
    assert "convnext_xxlarge_320" in capsys.readouterr().out


def test_open_clip_hub_configs_name_each_architecture():
    """An open_clip hub repo's model_cfg (open_clip_config.json) names its architecture: base_w and base_w_320
    share trunk and text tower and differ only in image size."""
    from dualtower.convert.open_clip.hub import decode_model_cfg

    for name in FAST + SLOW:
        cfg = decode_model_cfg(open_clip.get_model_config(name), f"laion-like/CLIP-{name}")
        assert cfg.vision == get_config(name).vision and cfg.embed_dim == get_config(name).embed_dim, name


@pytest.mark.parametrize("timm_name, ours, size", [("convnext_base.clip_laion2b", "convnext_base_w", 256),
                                                    ("convnext_base.clip_laiona_320", "convnext_base_w_320", 320),
                                                    ("convnext_large_mlp.clip_laion2b_ft_320", "convnext_large_d_320",
                                                     320)])
def test_timm_hub_layout_names_its_config_and_matches_timm(timm_name, ours, size, tmp_path):
    """timm's own Hub repos of the CLIP image towers (timm/convnext_base.clip_laion2b, ...): config.json names a
    trunk several of our configs share; the projection width, the image size and the `_mlp` head pick the one, and
    model_args (here smaller stages) apply over it. Equal to timm, preprocessing as its pretrained config."""
    from timm.data import resolve_data_config
    from timm.models._hub import save_for_hf

    args = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))
    torch.manual_seed(0)
    ref = perturb(timm.create_model(timm_name, pretrained=False, **args)).eval()
    with torch.no_grad():
        ref.head.fc.bias.zero_()  # timm's CLIP towers: open_clip's projection, with a zero bias
    save_for_hf(ref, str(tmp_path / "repo"), model_args=args, safe_serialization=True)
    model = dualtower.load(tmp_path / "repo")
    assert model.text is None and model.cfg.vision.layers == (1, 1, 2, 1) and model.cfg.vision.image_size == size
    assert model.cfg.embed_dim == get_config(ours).embed_dim
    assert bool(model.cfg.vision.head_hidden) == ("_mlp" in timm_name)
    data = resolve_data_config({}, model=ref)
    p = model.cfg.preprocess
    assert (p.mean, p.std, p.interpolation, p.image_size) == (data["mean"], data["std"], data["interpolation"], size)
    pixels = _pixels(size)
    with torch.no_grad():
        assert_close(model.encode_image(pixels), ref(pixels), timm_name)


def test_timm_hub_layout_refuses_what_it_does_not_build(tmp_path):
    from dualtower.convert.timm.hub import config_from_timm

    base = {"architecture": "convnext_base", "num_classes": 640, "pretrained_cfg": {"input_size": [3, 256, 256]}}
    assert config_from_timm(base, "x").name == "convnext_base"
    with pytest.raises(Exception, match="timm architecture 'convnext_huge' is not one dualtower builds; known: .*"
                                        "convnext_large_mlp"):
        config_from_timm({**base, "architecture": "convnext_huge"}, "x")
    with pytest.raises(Exception, match="model_args dualtower does not build for a ConvNeXt: \\['conv_mlp'\\]"):
        config_from_timm({**base, "model_args": {"conv_mlp": True}}, "x")
    with pytest.raises(Exception, match="num_classes 0 keeps the MLP head's hidden layer"):
        config_from_timm({**base, "architecture": "convnext_large_mlp", "num_classes": 0}, "x")
