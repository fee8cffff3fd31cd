"""Vision features for multimodal LLMs: intermediate layers and any resolution, equal to HF's CLIPVisionModel."""

import pytest
import torch
import transformers

import dualtower

from .conftest import assert_close, save_hf


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=16, eos_token_id=49407)
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, image_size=60,
                  patch_size=12, hidden_act="gelu")
    torch.manual_seed(0)
    hf = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision,
                                                        projection_dim=24)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path_factory.mktemp("hf")
    save_hf(hf, path)
    return hf.vision_model, dualtower.load(path)


@pytest.mark.parametrize("layers", [(-1,), (-2,), (0, 1, -1)])
def test_intermediate_layers_equal_hf_hidden_states(pair, layers):
    hf, ours = pair
    pixels = torch.randn(2, 3, 60, 60)
    with torch.no_grad():
        ref = hf(pixel_values=pixels, output_hidden_states=True).hidden_states
        got = ours.visual.features(pixels, layers=layers)
        no_cls = ours.visual.features(pixels, layers=layers, keep_cls=False)
    for layer, a, b in zip(layers, got, no_cls):
        assert_close(a, ref[layer], f"layer {layer}")
        assert torch.equal(b, a[:, 1:])


def test_final_norm_option(pair):
    hf, ours = pair
    pixels = torch.randn(2, 3, 60, 60)
    with torch.no_grad():
        ref = hf.post_layernorm(hf(pixel_values=pixels, output_hidden_states=True).hidden_states[-1])
        assert_close(ours.visual.features(pixels, final_norm=True)[0], ref, "final norm")


@pytest.mark.parametrize("size", [(60, 60), (84, 84), (72, 96), (36, 48)])
def test_any_resolution_equals_hf_interpolate_pos_encoding(pair, size):
    hf, ours = pair
    pixels = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = hf(pixel_values=pixels, output_hidden_states=True, interpolate_pos_encoding=True)
        got = ours.visual.features(pixels, layers=(-1,), interpolate_pos=True)[0]
        assert_close(got, ref.hidden_states[-1], f"hidden states at {size}")
        assert_close(ours.visual.norm_pooled(ours.visual.pool(got)), ref.pooler_output, f"pooled at {size}")


def test_resized_positions_are_cached_and_refreshed(pair):
    _, ours = pair
    visual = ours.visual
    visual._pos_cache.clear()
    with torch.no_grad():
        first = visual.pos_embed_for(7, 8)
        assert visual.pos_embed_for(7, 8) is first and len(visual._pos_cache) == 1
        visual.pos_embed.add_(1.0)  # new weights: the cached resize must not be reused
        second = visual.pos_embed_for(7, 8)
        visual.pos_embed.sub_(1.0)
    assert not torch.equal(first, second)


def test_other_sizes_need_the_flag_and_layers_are_checked(pair):
    _, ours = pair
    with pytest.raises(ValueError, match="interpolate_pos=True"):
        ours.encode_image(torch.randn(1, 3, 72, 72))
    with pytest.raises(ValueError, match="outside"):
        ours.visual.features(torch.randn(1, 3, 60, 60), layers=(5,))
    assert ours.encode_image(torch.randn(1, 3, 72, 96), interpolate_pos=True).shape == (1, 24)


def test_features_command_writes_chosen_layers(tmp_path, capsys):
    from PIL import Image
    from safetensors import safe_open

    from dualtower.cli import main

    model = dualtower.create_model("tiny", seed=0)
    dualtower.save(model, tmp_path / "ckpt")
    for i in range(3):
        Image.new("RGB", (40 + 10 * i, 30), (40 * i, 90, 200)).save(tmp_path / f"im{i}.png")
    (tmp_path / "broken.png").write_bytes(b"nope")
    images = [str(tmp_path / f"im{i}.png") for i in range(3)] + [str(tmp_path / "broken.png")]
    status = main(["features", "--device", "cpu", "--model", str(tmp_path / "ckpt"), "--layer=-2,-1", "--no-cls", "--out",
                   str(tmp_path / "f.safetensors"), *images])
    assert status == 2 and "broken.png" in capsys.readouterr().err  # reported, and the others still written
    with safe_open(tmp_path / "f.safetensors", "pt") as f:
        assert f.get_tensor("layer-2").shape == (3, 16, 64) and f.get_tensor("layer-1").shape == (3, 16, 64)
        first = f.get_tensor("layer-2")[0]
    pixels = dualtower.get_transform(model)(Image.open(images[0]))[None]
    with torch.no_grad():
        assert torch.allclose(model.visual.features(pixels, layers=(-2,), keep_cls=False)[0][0], first, atol=1e-6)


def test_features_command_with_dynamic_tiles(tmp_path):
    from PIL import Image
    from safetensors import safe_open

    from dualtower.cli import main
    import json

    dualtower.save(dualtower.create_model("tiny", seed=0), tmp_path / "ckpt")
    Image.new("RGB", (96, 32), (10, 200, 30)).save(tmp_path / "wide.png")  # 3x1 tiles of 32 px, plus a thumbnail
    Image.new("RGB", (32, 32), (10, 200, 30)).save(tmp_path / "square.png")  # one tile, no thumbnail
    assert main(["features", "--device", "cpu", "--model", str(tmp_path / "ckpt"), "--tiles", "1-6", "--out",
                 str(tmp_path / "t.safetensors"), str(tmp_path / "wide.png"), str(tmp_path / "square.png")]) == 0
    with safe_open(tmp_path / "t.safetensors", "pt") as f:
        assert json.loads(f.metadata()["tiles_per_image"]) == [4, 1]
        assert f.get_tensor("layer-2").shape == (5, 17, 64)
