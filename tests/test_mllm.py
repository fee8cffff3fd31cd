"""InternVL's multimodal pieces against transformers: pixel shuffle, the projector, dynamic tiling."""

import random

import numpy as np
import pytest
import torch
import transformers
from transformers.models.got_ocr2 import image_processing_pil_got_ocr2 as got_ocr2
from transformers.models.internvl import modeling_internvl

from dualtower.mllm import Projector, dynamic_tiles, load_projector, pixel_shuffle, tile_grid

from .conftest import assert_close


@pytest.mark.parametrize("shape", [(2, 16, 16, 8), (1, 32, 32, 64), (3, 4, 8, 6)])
def test_pixel_shuffle_equals_internvl(shape):
    x = torch.randn(*shape)
    ref = modeling_internvl.InternVLModel.pixel_shuffle(None, x, scale_factor=0.5)
    assert torch.equal(pixel_shuffle(x, 0.5), ref)


def test_pixel_shuffle_rejects_odd_grids():
    with pytest.raises(ValueError, match="divide by 2"):
        pixel_shuffle(torch.randn(1, 5, 4, 8))


@pytest.mark.parametrize("layout", ["hf", "internvl"])
def test_projector_equals_internvl(layout):
    config = transformers.InternVLConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 2},
        text_config={"model_type": "qwen2", "hidden_size": 48, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "num_key_value_heads": 2})
    torch.manual_seed(0)
    ref = modeling_internvl.InternVLMultiModalProjector(config).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    state = {f"multi_modal_projector.{k}": v for k, v in ref.state_dict().items()}
    if layout == "internvl":
        rename = {"layer_norm": "mlp1.0", "linear_1": "mlp1.1", "linear_2": "mlp1.3"}
        state = {rename[k.split(".")[1]] + "." + k.split(".")[2]: v for k, v in state.items()}
    ours = load_projector(state, layout)
    x = torch.randn(2, 9, 32 * 4)
    with torch.no_grad():
        assert_close(ours(x), ref(x), "projector")
    with pytest.raises(KeyError, match="missing"):
        load_projector({}, layout)


def test_tile_grid_equals_transformers_on_many_shapes():
    rng = random.Random(0)
    sizes = [(rng.randint(20, 4000), rng.randint(20, 4000)) for _ in range(2000)]
    sizes += [(448, 448), (896, 448), (448, 896), (1344, 448), (1000, 1000), (100, 100)]
    for lo, hi in ((1, 12), (1, 6), (2, 9)):
        for w, h in sizes:
            ref = got_ocr2.get_optimal_tiled_canvas((h, w), (448, 448), lo, hi)
            assert tile_grid(w, h, 448, lo, hi) == tuple(ref), (w, h, lo, hi)


@pytest.mark.parametrize("max_tiles", [6, 12])
def test_dynamic_tiles_equal_transformers_on_real_photos(photos, max_tiles):
    from transformers.image_utils import SizeDict

    processor = got_ocr2.GotOcr2ImageProcessorPil()
    for name, image in photos.items():
        image = image.convert("RGB")
        ours = dynamic_tiles(image, 224, 1, max_tiles)
        ref = processor.crop_image_to_patches(np.asarray(image), 1, max_tiles, use_thumbnail=True,
                                              patch_size=SizeDict(height=224, width=224),
                                              resample=processor.resample)
        assert len(ours) == len(ref), name
        for a, b in zip(ours, ref):
            b = np.asarray(b)
            b = b if b.shape[-1] == 3 else b.transpose(1, 2, 0)
            diff = np.abs(np.asarray(a, dtype=np.int16) - b.astype(np.int16)).max()
            assert diff <= 1, f"{name}: tile differs by {diff}/255"


def test_projector_shapes_through_the_pipeline():
    tokens = torch.randn(2, 16 * 16, 64)  # (B, N, C) patch tokens of a 16x16 grid, class token dropped
    packed = pixel_shuffle(tokens.view(2, 16, 16, 64)).flatten(1, 2)  # (B, 64, 256)
    assert Projector(256, 96)(packed).shape == (2, 64, 96)


@pytest.mark.parametrize("layer", [-1, -2])
def test_image_tokens_equal_internvl_model(layer, tmp_path):
    """A whole transformers InternVLModel saved to disk: our load of its vision tower, pixel shuffle and
    projector give its `get_image_features`, at the last layer and the one before."""
    from dualtower import load
    from dualtower.mllm import image_tokens

    config = transformers.InternVLConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 56, "patch_size": 14, "norm_type": "rms_norm", "use_qk_norm": True},
        text_config={"model_type": "qwen2", "hidden_size": 48, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 300},
        vision_feature_layer=layer)
    torch.manual_seed(0)
    ref = transformers.InternVLModel(config).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ref.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    projector = load_projector(load_file(tmp_path / "model.safetensors"), "hf")
    ours = load(tmp_path)
    pixels = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref.get_image_features(pixel_values=pixels, vision_feature_layer=layer,
                                      vision_feature_select_strategy="default").pooler_output
        assert_close(image_tokens(ours, pixels, projector, layer=layer), want, f"image tokens at layer {layer}")
