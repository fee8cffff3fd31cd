"""MobileCLIP and MobileCLIP 2: parity with open_clip and timm on the same random weights (max |ours - ref| /
max |ref| <= 1e-5, fp32), before and after reparameterization, per block kind and per config; the folded form
saved, loaded, exported and refused for training; every command path a conv tower takes."""

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
from dualtower.model import fastvit

from .conftest import CAPTIONS, assert_close
from .test_parity_families import perturb


def perturb_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """`perturb`, and BatchNorm's running statistics away from (0, 1), so folding them is tested."""
    perturb(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return model


def _state_as(model, fmt: str) -> dict:
    """Our model as format `fmt`'s state dict, refused as `dualtower convert --to` refuses it."""
    from dualtower.checkpoint import state_of
    from dualtower.convert import get_format

    f = get_format(fmt)
    reason = f.can_write(model.cfg)
    if reason:
        raise UserError(reason)
    return f.from_ours(state_of(model), model.cfg)


def _pixels(size: int, n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


FAST = ["MobileCLIP2-S0", "MobileCLIP2-B"]
SLOW = ["MobileCLIP-S1", "MobileCLIP-S2", "MobileCLIP-B", "MobileCLIP2-S2", "MobileCLIP2-S3", "MobileCLIP2-S4",
        "MobileCLIP2-L-14"]


def match_open_clip(name: str, tmp_path, prepare) -> tuple:
    """open_clip's `name` with random weights (`prepare` perturbs them), saved and loaded by us: image (and the
    images' differences), text and logits within 1e-5 relative, and written back into open_clip strictly. (ours, pixels, open_clip's image
    embeddings, the three differences)."""
    torch.manual_seed(0)
    ref = prepare(open_clip.create_model(name)).eval()
    path = tmp_path / "open_clip_model.bin"
    torch.save(ref.state_dict(), path)
    ours = dualtower.load(path, arch=name)
    path.unlink()
    pixels = _pixels(get_config(name).vision.image_size)
    ids = open_clip.get_tokenizer(name)(CAPTIONS)
    with torch.no_grad():
        ref_img, ref_txt = ref.encode_image(pixels), ref.encode_text(ids)
        ref_logits = ref.logit_scale.exp() * torch.nn.functional.normalize(ref_img, dim=-1) @ \
            torch.nn.functional.normalize(ref_txt, dim=-1).T
        img = ours.encode_image(pixels)
        diffs = (assert_close(img, ref_img, "image"), assert_close(ours.encode_text(ids), ref_txt, "text"),
                 assert_close(ours(pixels, ids).logits_per_image, ref_logits, "logits"))
    # A random conv tower embeds every image nearly alike (S0: the images differ by 1e-4 of the embedding):
    # what tells them apart must match too, relative to its own size.
    centred = ref_img - ref_img.mean(0)
    assert float(centred.abs().max()) > 0
    assert_close(img - img.mean(0), centred, "image, between images")
    open_clip.create_model(name).load_state_dict(_state_as(ours, "open_clip"), strict=True)
    return ours, pixels, ref_img, diffs


@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_open_clip_configs_match_before_and_after_folding(name, tmp_path):
    ours, pixels, ref_img, (img, txt, logits) = match_open_clip(name, tmp_path, perturb_bn)
    with torch.no_grad():
        ours.reparameterize()
        folded = assert_close(ours.encode_image(pixels), ref_img, "image, folded")
    print(f"{name}: image {img:.2e} text {txt:.2e} logits {logits:.2e} folded image {folded:.2e}")
    branched = (fastvit.MobileOne, fastvit.LargeKernel, fastvit.RepMixer, fastvit.ConditionalPosEnc)
    assert all(m.reparam_conv is not None for m in ours.visual.modules() if isinstance(m, branched))


def test_preprocessing_is_open_clips_per_config():
    from open_clip.pretrained import get_pretrained_cfg

    for name, tag in [("MobileCLIP2-S0", "dfndr2b"), ("MobileCLIP2-S4", "dfndr2b"), ("MobileCLIP2-L-14", "dfndr2b"),
                      ("MobileCLIP-S1", "datacompdr"), ("MobileCLIP-B", "datacompdr_lt")]:
        theirs, ours = get_pretrained_cfg(name, tag), get_config(name).preprocess
        assert (ours.mean, ours.std, ours.interpolation, ours.resize_mode) == \
            (tuple(theirs["mean"]), tuple(theirs["std"]), theirs["interpolation"], theirs["resize_mode"]), name


def _bn_random(module: torch.nn.Module) -> torch.nn.Module:
    return perturb_bn(module).eval()


BLOCKS = {  # every kind of foldable block, in each variant the MCi towers use
    "mobileone 3x3 stride 2 + 1x1 branch": lambda: fastvit.MobileOne(3, 16, 3, 2),
    "mobileone depthwise 3x3 stride 2": lambda: fastvit.MobileOne(16, 16, 3, 2, depthwise=True),
    "mobileone 1x1 + identity": lambda: fastvit.MobileOne(16, 16, 1),
    "mobileone depthwise widening + squeeze-excite (final conv)":
        lambda: fastvit.MobileOne(16, 32, 3, depthwise=True, se=True),
    "mobileone without 1x1 branch (MCi3 stem)": lambda: fastvit.MobileOne(3, 16, 3, 2, scale=False),
    "large kernel 7x7 + 3x3, squeeze-excite": lambda: fastvit.LargeKernel(16, 32, 7, 2, se=True, act=True),
    "repmixer": lambda: fastvit.RepMixer(16),
    "conditional positional encoding": lambda: fastvit.ConditionalPosEnc(16),
}


@pytest.mark.parametrize("kind", sorted(BLOCKS))
def test_each_block_kind_folds_exactly(kind):
    torch.manual_seed(0)
    block = _bn_random(BLOCKS[kind]())
    cin = getattr(block, "cin", None) or block.dim
    x = torch.randn(2, cin, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = block(x)
        block.reparameterize()
        after = block(x)
    assert_close(after, before, kind)
    assert block.reparam_conv is not None and not any(isinstance(m, torch.nn.BatchNorm2d) for m in block.modules())


def test_timm_layouts_both_forms(tmp_path):
    """A bare timm fastvit_mci0 state dict loads and matches timm; the folded tower written as timm loads into
    timm's inference-mode model (what timm's reparameterize_model makes) with its exact keys and outputs."""
    torch.manual_seed(0)
    ref = _bn_random(timm.create_model("fastvit_mci0", num_classes=512))
    torch.save(ref.state_dict(), tmp_path / "timm.bin")
    ours = dualtower.load(tmp_path / "timm.bin", arch="MobileCLIP2-S0")
    assert ours.text is None
    pixels = _pixels(256)
    with torch.no_grad():
        expected = ref(pixels)
        assert_close(ours.encode_image(pixels), expected, "image")
        ours.reparameterize()
        state = _state_as(ours, "timm")
        folded = timm.create_model("fastvit_mci0", num_classes=512, inference_mode=True).eval()
        folded.load_state_dict(state, strict=True)
        assert_close(folded(pixels), expected, "timm folded")
    # The folded model round-trips through our format and loads folded; open_clip cannot hold it.
    dualtower.save(ours, tmp_path / "ours")
    again = dualtower.load(tmp_path / "ours")
    assert again.cfg.vision.folded and torch.equal(again.encode_image(pixels), ours.encode_image(pixels))


def test_folded_model_refuses_training_and_open_clip(tmp_path):
    model = dualtower.create_model("tiny-fastvit", seed=0).reparameterize()
    with pytest.raises(UserError, match="folded.*open_clip builds the training-time form"):
        _state_as(model, "open_clip")
    dualtower.save(model, tmp_path / "folded")
    from dualtower.train.loop import TrainingError
    from dualtower.train.config import TrainConfig
    from dualtower.train.loop import _prepare

    with pytest.raises(TrainingError, match="reparameterized.*train the unfolded form"):
        _prepare(dualtower.load(tmp_path / "folded"), TrainConfig())


def test_features_by_stage_and_refusals():
    model = dualtower.create_model("tiny-fastvit", seed=0)
    pixels = _pixels(64)
    with torch.no_grad():
        stem, last = model.visual.features(pixels, layers=(0, -1))
    assert stem.shape == (2, 16 * 16, 16) and last.shape == (2, 4 * 4, 64)
    with pytest.raises(UserError, match="stages 0..3.*by stage, not by block"):
        model.visual.features(pixels, layers=(7,))
    with pytest.raises(UserError, match="no final norm"):
        model.visual.features(pixels, final_norm=True)
    with pytest.raises(UserError, match="patch dropout needs patch tokens"):
        model.visual.set_patch_dropout(0.5)
    with pytest.raises(UserError, match="convolutional"):
        model.set_dropout(0.1)
    with pytest.raises(UserError, match="interpolate_pos=True"):
        model.encode_image(_pixels(96))
    assert model.encode_image(_pixels(96), interpolate_pos=True).shape == (2, 48)  # a conv tower takes any size


def test_config_round_trips_and_refuses_bad_stage_lists():
    cfg = get_config("MobileCLIP2-S3")
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    data = cfg.to_dict()
    data["vision"]["mixers"] = ["repmixer", "attention"]
    with pytest.raises(UserError, match="one entry per stage"):
        ModelConfig.from_dict(data)


def test_training_steps_on_a_conv_tower_with_checkpointing():
    """The unfolded tower trains: BatchNorm in training mode, gradients reach every stage, checkpointing per
    stage gives the same gradients."""
    grads = []
    for checkpointing in (False, True):
        model = dualtower.create_model("tiny-fastvit", seed=0).train()
        model.set_grad_checkpointing(checkpointing)
        ids = dualtower.get_tokenizer(model)(CAPTIONS[:4])
        out = model(_pixels(64, n=4), ids)
        loss = -out.logits_per_image.diagonal().mean()
        loss.backward()
        grads.append({k: p.grad.clone() for k, p in model.visual.named_parameters() if p.grad is not None})
    assert set(grads[0]) == {k for k, _ in model.visual.named_parameters()}
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-7), k


def onnx_matches(model, pixels: torch.Tensor, out) -> np.ndarray:
    """`model` exported to `out` at fp32: ONNX Runtime's image and text embeddings within 1e-4 relative of
    PyTorch's. PyTorch's normalised image embeddings."""
    from dualtower import onnx as donnx
    from dualtower.export import export

    texts = ["a photo of a cat", "two dogs playing in the snow"]
    with torch.no_grad():
        ref_img = model.encode_image(pixels, normalize=True).numpy()
        ref_txt = model.encode_text(dualtower.get_tokenizer(model)(texts), normalize=True).numpy()
    export(model, out)
    rt = donnx.load(out)
    assert_close(torch.from_numpy(rt.embed_pixels(pixels.numpy())), torch.from_numpy(ref_img), "image", rtol=1e-4)
    assert_close(torch.from_numpy(rt.embed_texts(texts)), torch.from_numpy(ref_txt), "text", rtol=1e-4)
    return ref_img


@pytest.mark.parametrize("name", ["MobileCLIP2-S0", pytest.param("MobileCLIP2-B", marks=pytest.mark.slow)])
def test_onnx_runtime_equals_pytorch(name, tmp_path):
    """Exported folded (the default) at fp32: ONNX Runtime within 1e-4 of the unfolded PyTorch model; int8
    (static, calibrated) within cosine 0.99."""
    from dualtower import onnx as donnx
    from dualtower.export import export

    torch.manual_seed(0)
    model = dualtower.create_model(name, seed=0)
    perturb_bn(model).eval()
    size = model.cfg.vision.image_size
    pixels = _pixels(size, n=3)
    ref_img = onnx_matches(model, pixels, tmp_path / "fp32")
    assert not model.cfg.vision.__dict__.get("folded") and not getattr(model.cfg.vision, "folded", False)
    if name == "MobileCLIP2-S0":
        export(model, tmp_path / "int8", precision="int8")
        int8 = donnx.load(tmp_path / "int8").embed_pixels(pixels.numpy())
        assert float((int8 * ref_img).sum(axis=1).min()) >= 0.99
        assert (tmp_path / "int8" / "image.onnx").stat().st_size < (tmp_path / "fp32" / "image.onnx").stat().st_size / 2


@pytest.mark.parametrize("arch", ["tiny-fastvit", "tiny-convnext"])
def test_search_with_a_conv_tower_on_both_runtimes(tmp_path, capsys, arch):
    """index, search by text and by image through the CLI, the Python API and HTTP, with a conv model (random
    weights: the answers must agree, and an image must find itself); then the index's model exported folded to
    ONNX (its identity is the unfolded weights') answers the same, and `index --runtime onnx` builds the same
    vectors."""
    from dualtower import onnx as donnx
    from dualtower.cli import main
    from dualtower.export import export
    from dualtower.search import SearchIndex, Store

    from .test_search import _Server

    photos = tmp_path / "photos"
    for i, (name, image) in enumerate(_real_photos()):
        (photos / ("a" if i % 2 else "b")).mkdir(parents=True, exist_ok=True)
        image.save(photos / ("a" if i % 2 else "b") / f"{name}.png")
    model = _discriminative(arch, [im for _, im in _real_photos()])
    dualtower.save(model, tmp_path / "model")
    out = tmp_path / "index"
    assert main(["index", str(photos), "--model", str(tmp_path / "model"), "--out", str(out), "--workers", "0"]) == 0
    assert "accepted" in capsys.readouterr().out
    index = SearchIndex(out)
    server = _Server(index)
    try:
        api = [h.key for h in index.search_text("a photo of a cat", 5)]
        assert main(["search", str(out), "a photo of a cat", "-k", "5", "--json"]) == 0
        assert [h["key"] for h in json.loads(capsys.readouterr().out)] == api
        status, reply = server.search({"text": "a photo of a cat", "k": 5})
        assert status == 200 and [r["key"] for r in reply["results"]] == api
        path = sorted((photos / "a").iterdir())[0]
        hits = index.search_image(dualtower.images.open_image(path), 3)
        assert hits[0].path == str(path) and hits[0].score == pytest.approx(1, abs=2e-3)
        status, reply = server.upload(path.name, path.read_bytes(), k=3)
        assert status == 200 and [r["key"] for r in reply["results"]] == [h.key for h in hits]
    finally:
        server.stop()
    export(model, tmp_path / "onnx")
    onnx_index = SearchIndex(out, model=donnx.load(tmp_path / "onnx"))
    assert [h.key for h in onnx_index.search_text("a photo of a cat", 5)] == api
    assert main(["index", str(photos), "--out", str(tmp_path / "index-onnx"), "--runtime", "onnx", "--model",
                 str(tmp_path / "onnx"), "--workers", "2"]) == 0
    a, b = Store(out), Store(tmp_path / "index-onnx")
    assert a.model["weights_sha256"] == b.model["weights_sha256"]
    assert np.abs(a.vectors().astype(np.float32)[np.argsort(a.live_rows()[1])] -
                  b.vectors().astype(np.float32)[np.argsort(b.live_rows()[1])]).max() < 2e-3
    for x in (a, b, index, onnx_index):
        x.close()


def _discriminative(name: str, images) -> "dualtower.DualEncoder":
    """A random conv tower tells images apart once its BatchNorm statistics are those of real images and its
    layer scales are not 1e-5 or 1e-6 (at init every photo embeds to nearly the same vector)."""
    from dualtower.images import eval_transform
    from dualtower.model import convnext

    model = dualtower.create_model(name, seed=0)
    transform = eval_transform(model.cfg.preprocess)
    with torch.no_grad():
        for m in model.visual.modules():
            if isinstance(m, (fastvit.LayerScale2d, convnext.Block)):
                m.gamma.fill_(0.5)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None  # a plain average over the batches seen
        model.train().encode_image(torch.stack([transform(im) for im in images]))
    return model.eval()


def _real_photos():
    """skimage's bundled colour photos, at most 256 px a side."""
    import skimage.data

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry"):
        from PIL import Image

        image = Image.fromarray(getattr(skimage.data, name)())
        image.thumbnail((256, 256))
        out.append((name, image))
    return out
