"""SigLIP 2: the NaFlex tower against transformers' Siglip2Model (random weights, fp32, max |diff| relative to
max |reference| <= 1e-5), our NaFlex preprocessing against transformers' Siglip2 image processor on real photos,
and the export back to a Siglip2Model directory."""

import numpy as np
import pytest
import torch

import dualtower
import dualtower.checkpoint
import dualtower.runtimes
from dualtower import convert
from dualtower.naflex import Patches, grid_for

from .conftest import assert_close
from .test_parity_families import perturb

PATCH = 8


def _siglip2_config(num_patches: int = 64):
    import transformers

    text = dict(vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=16, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    vision = dict(hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                  num_patches=num_patches, patch_size=PATCH)
    return transformers.Siglip2Config(text_config=text, vision_config=vision)


def _photos() -> list:
    """Real photos cut to many shapes: square, 4:3, 1:4 and 4:1 strips, tiny and odd sizes."""
    import skimage.data
    from PIL import Image

    astronaut = Image.fromarray(skimage.data.astronaut())  # 512 x 512
    coffee = Image.fromarray(skimage.data.coffee())  # 600 x 400
    chelsea = Image.fromarray(skimage.data.chelsea())  # 451 x 300
    return [astronaut, coffee, chelsea.crop((0, 0, 400, 100)), astronaut.crop((100, 0, 200, 400)),
            coffee.resize((37, 23)), chelsea.crop((10, 10, 13, 201)), astronaut.resize((64, 64))]


def _processor(max_patches: int):
    from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

    return Siglip2ImageProcessorPil(patch_size=PATCH, max_num_patches=max_patches)


@pytest.fixture(scope="module")
def hf_and_ours(tmp_path_factory):
    import transformers

    path = tmp_path_factory.mktemp("siglip2") / "hf"
    torch.manual_seed(0)
    hf = perturb(transformers.Siglip2Model(_siglip2_config()).eval())
    hf.save_pretrained(path)
    _processor(64).save_pretrained(path)  # as a hub repo has it: the model's default budget
    return hf, dualtower.load(path), path


@pytest.mark.parametrize("max_patches", [16, 64, 256])
def test_siglip2_naflex_matches_transformers_on_mixed_aspect_ratios(hf_and_ours, max_patches):
    """One batch of photos of many shapes at each patch budget (the learned grid is 8 x 8, so 16 resamples it
    down, 256 up): image embeddings, text embeddings and logits equal Siglip2Model's."""
    hf, ours, _ = hf_and_ours
    assert ours.cfg.vision.naflex and ours.cfg.preprocess.max_patches == 64
    inputs = _processor(max_patches)(images=_photos(), return_tensors="pt")
    assert (inputs["spatial_shapes"][:, 0] != inputs["spatial_shapes"][:, 1]).any()  # mixed shapes in one batch
    ids = torch.randint(3, 300, (3, 16), generator=torch.Generator().manual_seed(2))
    ids[:, 9:] = 0  # padded with Gemma's pad id
    with torch.no_grad():
        ref = hf(input_ids=ids, **inputs)
        out = ours(Patches.from_hf(inputs), ids)
        image = assert_close(ours.encode_image(inputs), hf.get_image_features(**inputs).pooler_output, "image")
        text = assert_close(ours.encode_text(ids), hf.get_text_features(input_ids=ids).pooler_output, "text")
        logits = assert_close(out.logits_per_image, ref.logits_per_image, "logits")
    print(f"Siglip2Model max_num_patches={max_patches}: image {image:.2e} text {text:.2e} logits {logits:.2e}")


def test_siglip2_padding_does_not_change_an_image(hf_and_ours):
    """An image's embedding is the same alone, padded to the budget, or beside a larger image."""
    _, ours, _ = hf_and_ours
    transform = dualtower.get_transform(ours)
    photos = _photos()
    small, large = transform(photos[4]), transform(photos[0])
    with torch.no_grad():
        alone = ours.encode_image(Patches.collate([small]))
        padded = ours.encode_image(Patches.collate([small], length=64))
        beside = ours.encode_image(Patches.collate([large, small]))[1:]
    assert_close(padded, alone, "padded")
    assert_close(beside, alone, "beside a larger image")


def test_siglip2_hidden_states_match_on_real_patches(hf_and_ours):
    _, ours, _ = hf_and_ours
    hf = hf_and_ours[0]
    inputs = _processor(64)(images=_photos()[:4], return_tensors="pt")
    with torch.no_grad():
        ref = hf.vision_model(**inputs, output_hidden_states=True)
        states = ours.visual.features(Patches.from_hf(inputs), layers=(0, 1, 2))
    n = int(inputs["pixel_attention_mask"].sum(1).max())
    valid = inputs["pixel_attention_mask"][:, :n, None].bool()
    for layer, state in zip((0, 1, 2), states):
        assert_close(state * valid, ref.hidden_states[layer][:, :n] * valid, f"hidden state {layer}")


@pytest.mark.parametrize("max_patches", [64, 256])
@pytest.mark.parametrize("backend", ["pil", "torchvision"])
def test_naflex_preprocessing_equals_the_reference_processor(hf_and_ours, max_patches, backend):
    """Our transform makes the processor's tensors from PIL photos of many shapes, 1:4 and 4:1 among them:
    the same grids, masks and padding, and patch values within 1/255 of the pixel range. Against the PIL
    backend they are equal (the same Pillow bilinear resize of the same 8-bit image); the torchvision backend
    resizes with its own antialiasing kernel, a level apart on a few percent of the values."""
    from transformers.models.siglip2.image_processing_siglip2 import Siglip2ImageProcessor

    _, ours, _ = hf_and_ours
    photos = _photos()
    reference = _processor(max_patches) if backend == "pil" else \
        Siglip2ImageProcessor(patch_size=PATCH, max_num_patches=max_patches)
    ref = reference(images=photos, return_tensors="pt")
    transform = dualtower.get_transform(ours, max_patches=max_patches)
    batch = Patches.collate([transform(p) for p in photos], length=max_patches)
    assert torch.equal(batch.shapes, ref["spatial_shapes"].long())
    assert torch.equal(batch.mask, ref["pixel_attention_mask"].int())
    diff = (batch.values - ref["pixel_values"]).abs().max().item()
    level = 2 / 255  # values span [-1, 1]: one 8-bit level
    assert diff <= (1e-6 if backend == "pil" else level + 1e-6), diff
    print(f"NaFlex preprocessing vs {backend} processor, max_num_patches={max_patches}: max |diff| "
          f"{diff / level:.3f} levels")


def test_naflex_grid_follows_the_reference_search():
    """The grid search matches transformers' helper on many sizes, extreme ones included."""
    from transformers.models.siglip2.image_processing_pil_siglip2 import get_image_size_for_max_num_patches

    rng = np.random.default_rng(0)
    sizes = [(1, 1), (1, 5000), (5000, 1), (224, 224), (17, 1000), (3, 3)] + \
        [tuple(int(v) for v in rng.integers(1, 3000, 2)) for _ in range(200)]
    for budget in (1, 16, 64, 256, 1024):
        for patch in (14, 16):
            for h, w in sizes:
                th, tw = get_image_size_for_max_num_patches(h, w, patch, budget)
                assert grid_for(h, w, patch, budget) == (th // patch, tw // patch), (h, w, patch, budget)
    # At native resolution an image smaller than the budget keeps its size (whole patches, rounded up).
    assert grid_for(20, 33, 16, 256, max_scale=1.0) == (2, 3) and grid_for(20, 33, 16, 256) == (12, 20)
    assert grid_for(2000, 3300, 16, 256, max_scale=1.0) == grid_for(2000, 3300, 16, 256)


def test_siglip2_exports_to_a_directory_transformers_loads(hf_and_ours, tmp_path):
    import transformers

    hf, ours, _ = hf_and_ours
    convert.convert(hf_and_ours[2], tmp_path / "back", to="hf")
    again = transformers.Siglip2Model.from_pretrained(tmp_path / "back").eval()
    inputs = _processor(64)(images=_photos(), return_tensors="pt")
    ids = torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert_close(again(input_ids=ids, **inputs).logits_per_image,
                     hf(input_ids=ids, **inputs).logits_per_image, "logits after export")
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "back")
    assert processor.max_num_patches == 64 and processor.patch_size == PATCH


def test_naflex_models_are_refused_by_formats_without_patch_input(hf_and_ours, tmp_path):
    _, ours, _ = hf_and_ours
    for target in ("open_clip", "hf-siglip", "hf-clip", "timm"):
        with pytest.raises(dualtower.checkpoint.CheckpointError, match="NaFlex"):
            convert.export(ours, tmp_path / target, target)
    convert.export(ours, tmp_path / "ours", "dualtower")  # our own checkpoint keeps it, and loads it back
    again = dualtower.load(tmp_path / "ours")
    assert again.cfg == ours.cfg
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ours.state_dict().values()))
    batch = Patches.collate([dualtower.get_transform(ours)(p) for p in _photos()[:3]])
    with torch.no_grad():
        assert_close(again.encode_image(batch), ours.encode_image(batch), "reloaded")


def test_naflex_input_errors_name_the_problem(hf_and_ours):
    _, ours, _ = hf_and_ours
    batch = Patches.collate([dualtower.get_transform(ours)(p) for p in _photos()[:2]])
    wrong = Patches(batch.values, batch.mask, batch.shapes.flip(0) * 2)
    with pytest.raises(ValueError, match="spatial_shapes and pixel_attention_mask disagree"):
        ours.encode_image(wrong)
    with pytest.raises(ValueError, match="missing spatial_shapes"):
        ours.encode_image({"pixel_values": batch.values, "pixel_attention_mask": batch.mask})
    with pytest.raises(ValueError, match=r"must be \(B, N, 192\)"):
        ours.encode_image(Patches(batch.values[..., :10], batch.mask, batch.shapes))
    plain = dualtower.create_model("tiny")
    with pytest.raises(ValueError, match="need a NaFlex tower"):
        plain.encode_image(batch)


def test_embedding_a_folder_with_a_naflex_model(hf_and_ours, tmp_path):
    """The bulk path (`dualtower embed`, `index`): the loader batches NaFlex images of many shapes, and each
    embedding equals the one of the image alone."""
    from dualtower.data import open_source
    from dualtower.eval.embed import embed_source

    _, ours, _ = hf_and_ours
    photos = _photos()
    for i, photo in enumerate(photos):
        photo.save(tmp_path / f"{i}.png")
    embedded, _ = embed_source(ours, open_source(str(tmp_path), captions=False), batch_size=3, workers=0)
    transform = dualtower.get_transform(ours)
    with torch.no_grad():
        for row, sample_id in enumerate(embedded.ids):
            alone = ours.encode_image(Patches.collate([transform(photos[int(sample_id.split(".")[0])])]),
                                      normalize=True)
            assert_close(embedded.features[row:row + 1], alone, f"photo {sample_id}")


@pytest.fixture(scope="module")
def naflex_exports(hf_and_ours, tmp_path_factory):
    from dualtower.export import export

    _, ours, _ = hf_and_ours
    root = tmp_path_factory.mktemp("naflex-export")
    for precision in ("fp32", "int8"):
        export(ours, root / precision, precision=precision)
    export(ours, root / "pt2", format="torch-export")
    return root


@pytest.mark.parametrize("max_patches", [1, 4, 16, 64, 256])
def test_naflex_onnx_equals_pytorch_and_transformers_at_every_budget(hf_and_ours, naflex_exports, max_patches):
    """Issue 32, item 5: the NaFlex tower exported with a dynamic patch count, the padding mask and the grids as
    inputs and the positions resampled in the graph. On photos from 1:20 to 4:1 in one batch, at budgets from one
    patch to 4x the learned grid, ONNX Runtime equals our PyTorch tower and transformers' Siglip2Model within 1e-4
    relative; int8 keeps cosine >= 0.99; the torch.export program equals eager within 1e-5."""
    import dualtower.onnx
    from dualtower.export import load_programs

    hf, ours, _ = hf_and_ours
    photos = _photos()
    inputs = _processor(max_patches)(images=photos, return_tensors="pt")
    batch = Patches.from_hf(inputs)
    runtime = dualtower.onnx.load(naflex_exports / "fp32")
    with torch.no_grad():
        eager = ours.encode_image(batch)
        reference = hf.get_image_features(**inputs).pooler_output
        program = load_programs(naflex_exports / "pt2")["image"]
        exported = program(batch.values, batch.mask.long(), batch.shapes)
    onnx_out = torch.from_numpy(runtime.encode_image(batch))
    assert_close(onnx_out, eager, f"ONNX Runtime at budget {max_patches}", rtol=1e-4)
    assert_close(onnx_out, reference, f"ONNX Runtime against Siglip2Model at budget {max_patches}", rtol=1e-4)
    assert_close(exported, eager, f"torch.export at budget {max_patches}")
    as_arrays = runtime.encode_image({k: v.numpy() for k, v in inputs.items()})  # the processor's dict as it is
    np.testing.assert_allclose(as_arrays, onnx_out.numpy(), rtol=0, atol=1e-6)
    int8 = dualtower.onnx.load(naflex_exports / "int8").encode_image(batch, normalize=True)
    cos = (int8 * torch.nn.functional.normalize(eager, dim=-1).numpy()).sum(1)
    assert cos.min() >= 0.99, cos


def test_naflex_export_embeds_and_indexes_without_torch_as_pytorch_does(hf_and_ours, naflex_exports, tmp_path):
    """The ONNX runtime preprocesses NaFlex images itself (numpy patches, padded per batch), so `embed_images`
    and `dualtower index --runtime onnx` take a NaFlex export; its embeddings equal PyTorch's, and it refuses a
    batch whose mask and grids disagree, naming them."""
    import dualtower.onnx
    from dualtower.cli import main
    from dualtower.search import Store

    _, ours, path = hf_and_ours
    runtime = dualtower.onnx.load(naflex_exports / "fp32")
    assert runtime.checked.passed  # the export's probes, NaFlex images among them
    photos = _photos()
    ours_embedder = dualtower.runtimes.as_embedder(ours)
    np.testing.assert_allclose(runtime.embed_images(photos, batch_size=3), ours_embedder.embed_images(photos),
                               rtol=0, atol=1e-5)
    values, mask, shapes = runtime.collate([runtime.transform(p) for p in photos[:2]])
    with pytest.raises(ValueError, match="spatial_shapes and pixel_attention_mask disagree"):
        runtime.encode_image((values, mask, shapes[::-1] * 2))
    with pytest.raises(ValueError, match=r"a NaFlex batch must be values \(B, N, 192\)"):
        runtime.encode_image((values[..., :10], mask, shapes))
    for i, photo in enumerate(photos):
        photo.save(tmp_path / f"{i}.png")
    for runtime_name, model in (("onnx", naflex_exports / "fp32"), ("torch", path)):
        assert main(["index", str(tmp_path), "--model", str(model), "--runtime", runtime_name, "--workers", "1",
                     "--out", str(tmp_path / f"index-{runtime_name}")]) == 0
    stores = [Store(tmp_path / f"index-{r}") for r in ("onnx", "torch")]
    vectors = [s.vectors()[s.live_rows()[0]].astype(np.float32) for s in stores]
    assert len(vectors[0]) == len(photos) and np.abs(vectors[0] - vectors[1]).max() < 2e-3  # float16 storage
    for store in stores:
        store.close()
