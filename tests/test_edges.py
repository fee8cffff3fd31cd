"""Edges where real files and real tools meet the library (issue 18); each test failed before its fix."""

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import dualtower
from dualtower.cli import main

from .conftest import CAPTIONS, assert_close, save_hf
from .test_parity_hf import _features, _hf_config, _random_hf


# ------------------------------------------------------------------------------------------- HF interop


@pytest.mark.parametrize("vocab", [49409, 300])
def test_legacy_eos_token_id_2_pools_at_argmax_as_transformers_does(vocab, tmp_path):
    """eos_token_id 2 (transformers' default, and every config before its PR #24773): transformers pools at
    argmax(ids). We pooled at the first id 2: an error with 49,409 ids, wrong embeddings with a small vocabulary."""
    hf = _random_hf(_hf_config(vocab_size=vocab, eos_token_id=2))
    save_hf(hf, tmp_path / "hf")
    ours = dualtower.load(tmp_path / "hf")
    assert ours.cfg.text.pool == "argmax"
    ids = torch.randint(3, vocab, (4, 20), generator=torch.Generator().manual_seed(0))
    if vocab > 49407:
        ids = dualtower.get_tokenizer("tiny")(CAPTIONS[:4], context_length=32)
    with torch.no_grad():
        assert_close(ours.encode_text(ids), _features(hf.get_text_features(input_ids=ids)), "text embeddings")
    # And back: transformers reads our export the same way.
    dualtower.convert.export(ours, tmp_path / "back", "hf")
    again = transformers.CLIPModel.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        assert_close(ours.encode_text(ids), _features(again.get_text_features(input_ids=ids)), "re-exported")


def test_transformers_own_clip_test_configuration_loads(tmp_path):
    """transformers' CLIP test setup: image 30, patch 2, hidden 32, 4 heads, intermediate 37, projection 64,
    vocabulary 99, 512 positions (eos_token_id left at its default 2)."""
    tower = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    config = transformers.CLIPConfig(text_config=dict(vocab_size=99, max_position_embeddings=512, **tower),
                                     vision_config=dict(image_size=30, patch_size=2, **tower), projection_dim=64)
    hf = _random_hf(config)
    save_hf(hf, tmp_path / "hf")
    ours = dualtower.load(tmp_path / "hf")
    ids = torch.randint(0, 99, (3, 7), generator=torch.Generator().manual_seed(1))
    pixels = torch.randn(2, 3, 30, 30, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_close(ours.encode_text(ids), _features(hf.get_text_features(input_ids=ids)), "text")
        assert_close(ours.encode_image(pixels), _features(hf.get_image_features(pixel_values=pixels)), "image")
        assert_close(ours(pixels, ids).logits_per_image, hf(input_ids=ids, pixel_values=pixels).logits_per_image,
                     "logits")


@pytest.mark.parametrize("cls", ["CLIPTextModelWithProjection", "CLIPTextModel"])
def test_a_clip_text_model_directory_loads_its_tower(cls, tmp_path):
    """transformers' text tower alone (Stable Diffusion's text encoders are these) loads as a text-only model with
    transformers' outputs; it was refused ("every model has a vision tower")."""
    full = _random_hf(_hf_config())
    text_config = full.config.text_config
    text_config.projection_dim = full.config.projection_dim
    hf = getattr(transformers, cls)(text_config).eval()
    own = {k: v for k, v in full.state_dict().items() if k.startswith(("text_model.", "text_projection."))}
    hf.load_state_dict(own if cls.endswith("Projection") else
                       {k.removeprefix("text_model."): v for k, v in own.items() if k.startswith("text_model.")})
    save_hf(hf, tmp_path / "hf")
    ours = dualtower.load(tmp_path / "hf")
    assert ours.cfg.vision is None and ours.visual is None and ours.logit_scale is None
    ids = dualtower.get_tokenizer(ours)(CAPTIONS, context_length=ours.cfg.text.context_length)
    with torch.no_grad():
        out = hf(input_ids=ids)
        ref = out.text_embeds if cls.endswith("Projection") else out.pooler_output
        assert_close(ours.encode_text(ids), ref, f"{cls} text embeddings")
        if cls.endswith("Projection"):  # the same tower as the whole model's, and as towers="text" of it
            save_hf(full, tmp_path / "full")
            alone = dualtower.load(tmp_path / "full", towers="text")
            assert alone.visual is None
            assert torch.equal(alone.encode_text(ids), ours.encode_text(ids))
        with pytest.raises(ValueError, match="text-only"):
            ours.encode_image(torch.zeros(1, 3, 60, 60))
    dualtower.save(ours, tmp_path / "ours")  # our own format keeps it, and loads it back
    again = dualtower.load(tmp_path / "ours")
    assert again.cfg == ours.cfg and torch.equal(again.encode_text(ids), ours.encode_text(ids))
    with pytest.raises(dualtower.checkpoint.CheckpointError, match="no vision tower"):
        dualtower.load(tmp_path / "hf", towers="both")
    with pytest.raises(dualtower.checkpoint.CheckpointError, match="one-tower"):
        dualtower.convert.export(ours, tmp_path / "back", "hf-clip")


def test_open_clip_train_zero_shot_runs_on_our_model():
    """open_clip_train's evaluation calls `model(image=...)` and reads `output["image_features"]`: our model behind
    open_clip's interface (compat.open_clip.OpenClipModel, the one place that dict output lives) runs it. The
    DualEncoder itself always returns DualEncoderOutput and names the wrapper when given open_clip's keywords."""
    import types

    from open_clip.zero_shot_classifier import build_zero_shot_classifier
    from open_clip_train.zero_shot import run

    from dualtower.compat.open_clip import OpenClipModel

    torch.manual_seed(0)
    ours = dualtower.create_model("tiny").eval()
    model = OpenClipModel(ours)
    tokenizer = dualtower.get_tokenizer(ours)
    classes = ["cat", "dog", "car", "tree", "boat", "house", "bird"]
    size = ours.cfg.vision.image_size
    images, labels = torch.randn(12, 3, size, size), torch.arange(12) % len(classes)
    classifier = build_zero_shot_classifier(model, tokenizer, classes, ["a photo of a {}."], device="cpu")
    args = types.SimpleNamespace(device="cpu", precision="fp32", batch_size=4)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=4)
    top1, top5 = run(model, classifier, loader, args)
    with torch.no_grad():
        out = model(image=images)
        assert out["text_features"] is None and set(out) == {"image_features", "text_features", "logit_scale"}
        assert torch.equal(out["image_features"], model.encode_image(images, normalize=True))
        logits = model.encode_image(images, normalize=True) @ classifier
    assert top1 == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert top5 == pytest.approx((logits.topk(5).indices == labels[:, None]).any(1).float().mean().item())
    ids = tokenizer(["a cat"])
    with torch.no_grad():
        both = model(image=images[:2], text=ids)
        assert torch.equal(both["text_features"], model.encode_text(ids, normalize=True))
        assert torch.equal(both["logit_scale"], ours(images[:2], ids).logit_scale)
    with pytest.raises(TypeError, match="OpenClipModel"):
        ours(images, image=images)
    with pytest.raises(TypeError, match="OpenClipModel"):
        ours(image=images)


# --------------------------------------------------------------------------------------- CLI and outputs


@pytest.fixture()
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


def test_features_refuses_an_output_name_it_would_not_honour(images, tmp_path, capsys):
    dualtower.save(dualtower.create_model("tiny"), tmp_path / "ckpt")
    assert main(["features", "--device", "cpu", "--model", str(tmp_path / "ckpt"), "--out", str(tmp_path / "x.npz"),
                 str(images / "im0.png")]) == 2
    assert "FILE.safetensors" in capsys.readouterr().err and not (tmp_path / "x.npz").exists()


def test_bf16_embeddings_are_unit_length(images, tmp_path):
    dualtower.save(dualtower.create_model("tiny", seed=1), tmp_path / "ckpt")
    out = tmp_path / "emb.npz"
    assert main(["embed", "--device", "cpu", "--workers", "0", "--precision", "bf16", "--model",
                 str(tmp_path / "ckpt"), "--data", str(images), "--out", str(out)]) == 0
    norms = np.linalg.norm(np.load(out)["image_embeds"], axis=1)
    assert np.abs(norms - 1).max() < 1e-6, norms


def test_an_output_with_no_rows_is_an_error(images, tmp_path, capsys):
    dualtower.save(dualtower.create_model("tiny"), tmp_path / "ckpt")
    out = tmp_path / "emb.npz"  # --text on images without captions: every sample is skipped
    assert main(["embed", "--device", "cpu", "--workers", "0", "--model", str(tmp_path / "ckpt"), "--data",
                 str(images), "--out", str(out), "--text"]) == 2
    err = capsys.readouterr().err
    assert "nothing to embed" in err and "skipped 3" in err and not out.exists()


def test_zero_shot_with_few_classes_has_no_top5_and_writes_valid_json(tmp_path, capsys):
    for name in ("cat", "dog"):
        (tmp_path / "classes" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (32, 32), (40 * i, 200 if name == "cat" else 20, 90)).save(
                tmp_path / "classes" / name / f"{i}.png")
    out = tmp_path / "zs.json"
    assert main(["eval", "zeroshot", "--device", "cpu", "--workers", "0", "--model", "tiny", "--data",
                 f"classes:{tmp_path / 'classes'}", "--out", str(out)]) == 0
    text = out.read_text()
    result = json.loads(text)  # strict JSON: no NaN
    assert "NaN" not in text and "top5" not in result and "top1" in result
    assert "top-5" not in capsys.readouterr().out


def test_saved_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        dualtower.save(dualtower.create_model("tiny"), tmp_path / "ckpt")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "ckpt").iterdir()}
    assert modes == {"config.json": 0o644, "model.safetensors": 0o644}, modes


def test_help_and_errors_answer_without_torch_and_without_stray_quotes(tmp_path):
    code = ("import sys, contextlib, io\nfrom dualtower.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    for argv in (['--help'], ['train', '--help'], ['--version']):\n"
            "        try:\n            main(argv)\n        except SystemExit:\n            pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
    version = subprocess.run([sys.executable, "-m", "dualtower", "--version"], capture_output=True, text=True)
    assert version.stdout.strip() == f"dualtower {dualtower.__version__}"
    dualtower.convert.export(dualtower.create_model("tiny"), tmp_path / "oc.safetensors", "open_clip")
    err = subprocess.run([sys.executable, "-m", "dualtower", "convert", str(tmp_path / "oc.safetensors"),
                          str(tmp_path / "out"), "--arch", "ViT-Q-99"], capture_output=True, text=True).stderr
    assert err.startswith("dualtower convert: error: unknown architecture 'ViT-Q-99'"), err


@pytest.mark.parametrize("arch", ["small-digits", "tiny-ls-mean"])
def test_open_clip_export_of_an_unnamed_architecture_carries_its_config(arch, tmp_path, photos):
    """open_clip names neither architecture: written to a folder, the export is open_clip's hub layout, which
    `open_clip.create_model_and_transforms("local-dir:...")` loads with no hand-written config."""
    import open_clip

    from .test_parity_families import perturb

    ours = perturb(dualtower.create_model(arch, seed=2))
    dualtower.save(ours, tmp_path / "ours")
    assert main(["convert", str(tmp_path / "ours"), str(tmp_path / "oc"), "--to", "open_clip"]) == 0
    assert (tmp_path / "oc" / "open_clip_config.json").is_file()
    ref, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'oc'}")
    ref.eval()
    size = ours.cfg.vision.image_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    ids = dualtower.get_tokenizer(ours)(CAPTIONS[:4])
    with torch.no_grad():
        assert_close(ours.encode_image(pixels), ref.encode_image(pixels), "image")
        assert_close(ours.encode_text(ids), ref.encode_text(ids), "text")
    transform = dualtower.get_transform(ours)
    for name, image in list(photos.items())[:3]:
        image = image.convert("RGB")
        assert_close(transform(image), preprocess(image), f"{name} pixels", rtol=1e-6)
    assert dualtower.load(tmp_path / "oc").cfg.vision == ours.cfg.vision  # and read back by us


def _files_of_every_mode(photos, folder):
    """Real photos saved in each mode a user's folder holds: alpha (a real gradient), grey with alpha, palette
    (with and without a transparent entry), bilevel, 8- and 16-bit grey, CMYK as JPEG and TIFF."""
    paths = []
    for name in ("coffee", "rocket", "chelsea", "astronaut"):
        rgb = photos[name].convert("RGB")
        a = np.asarray(rgb)
        alpha = np.broadcast_to(np.linspace(0, 255, a.shape[1]).astype(np.uint8), a.shape[:2])
        grey = np.asarray(rgb.convert("L"))
        palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        variants = {
            "RGBA.png": (Image.fromarray(np.dstack([a, alpha]), "RGBA"), {}),
            "LA.png": (Image.fromarray(np.dstack([grey, alpha]), "LA"), {}),
            "P.png": (palette, {}),
            "P-transparent.png": (palette, {"transparency": 0}),
            "1.png": (rgb.convert("1"), {}),
            "L.png": (rgb.convert("L"), {}),
            "I16.png": (Image.fromarray(grey.astype(np.uint16) * 257), {}),
            "CMYK.jpg": (rgb.convert("CMYK"), {}),
            "CMYK.tif": (rgb.convert("CMYK"), {}),
        }
        for suffix, (image, options) in variants.items():
            path = folder / f"{name}-{suffix}"
            image.save(path, **options)
            paths.append(path)
    return paths


def test_files_of_every_mode_preprocess_as_each_reference_does(tmp_path, photos):
    """open_clip resizes and crops in the file's own mode and converts to RGB last (alpha dropped, 16-bit
    clipped); transformers' processors composite over white first. Each model follows its own reference: 36 real
    files, pixels equal (max abs diff 0). Before, every file went through one rule (composite, 16-bit scaled):
    open_clip's own transparent logo gave embedding cosine 0.26 against open_clip."""
    import open_clip

    from dualtower.images import open_image

    paths = _files_of_every_mode(photos, tmp_path)
    modes = {Image.open(p).mode for p in paths}
    assert len(paths) >= 30 and {"RGBA", "LA", "P", "1", "L", "I;16", "CMYK"} <= modes, modes

    reference = open_clip.image_transform(224, is_train=False)
    ours = dualtower.get_transform("ViT-B-32")
    assert ours.cfg.rgb == "after_resize"
    for path in paths:
        assert torch.equal(ours(open_image(path)), reference(Image.open(path))), f"{path.name}: open_clip pixels"

    config = _hf_config()
    config.vision_config.image_size, config.vision_config.patch_size = 224, 32
    _random_hf(config).save_pretrained(tmp_path / "hf")
    processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size=224)
    processor.save_pretrained(tmp_path / "hf")
    hf_model = dualtower.load(tmp_path / "hf")
    assert hf_model.cfg.preprocess.rgb == "white_first"
    transform = dualtower.get_transform(hf_model)
    for path in paths:
        image = open_image(path)
        crop = np.asarray(transform.rgb_after(transform.resize_and_crop(transform.rgb_before(image))))
        raw = processor(Image.open(path), do_rescale=False, do_normalize=False, return_tensors="np")
        assert np.abs(crop.transpose(2, 0, 1) - raw["pixel_values"][0]).max() == 0, f"{path.name}: HF pixels"
        pixels = torch.as_tensor(processor(Image.open(path), return_tensors="np")["pixel_values"][0])
        assert (transform(image) - pixels).abs().max() < 1e-5, f"{path.name}: HF normalised pixels"


def test_an_hf_clip_model_classifies_as_transformers_pipeline_does(tmp_path, photos):
    """A model loaded from an HF directory crops as HF's image processor does ((H - h) // 2, not round), so its
    zero-shot probabilities equal transformers' zero-shot-image-classification pipeline on real photos (one of
    them 640x427, where the two crop rules differ by a pixel)."""
    from dualtower.eval import ZeroShotClassifier

    config = _hf_config()
    config.vision_config.image_size, config.vision_config.patch_size = 224, 32  # 640x427 -> 335x224: 111 to crop
    hf = _random_hf(config)
    save_hf(hf, tmp_path / "hf")
    dualtower.convert.export(dualtower.load(tmp_path / "hf"), tmp_path / "hf2", "hf")  # with tokenizer files
    ours = dualtower.load(tmp_path / "hf2")
    assert ours.cfg.preprocess.center_crop == "floor"
    processor = transformers.CLIPImageProcessorPil.from_pretrained(tmp_path / "hf2")
    pipe = transformers.pipeline("zero-shot-image-classification", model=str(tmp_path / "hf2"),
                                 image_processor=processor, device="cpu")
    labels = ["cat", "rocket", "coffee", "astronaut"]
    classifier = ZeroShotClassifier(ours, labels, ["This is a photo of {c}."])  # the pipeline's template
    assert any(im.size == (640, 427) for im in photos.values())
    transform = dualtower.get_transform(ours)
    for name, image in photos.items():
        image = image.convert("RGB")
        pixels = torch.as_tensor(processor(image, return_tensors="pt")["pixel_values"][0])
        assert (transform(image) - pixels).abs().max() < 1e-5, f"{name}: pixels differ from HF's processor"
        theirs = {r["label"]: r["score"] for r in pipe(image, candidate_labels=labels)}
        mine = classifier.probs([image])[0]
        for label, p in zip(labels, mine.tolist()):
            assert abs(p - theirs[label]) <= 1e-5, (name, label, p, theirs[label])


def test_train_help_lists_every_config_key_and_overrides_take_a_separate_value(capsys, tmp_path):
    from dataclasses import fields

    from dualtower import configtree
    from dualtower.train.config import TrainConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for section in fields(TrainConfig):
        for f in fields(section.default_factory):
            assert f"--{section.name}.{f.name}=" in out and f.metadata["help"] in out
    assert "--train.steps=300" in out and "--train.progress=true" in out
    cfg = configtree.load(TrainConfig, None, configtree.pair_overrides(
        ["--train.steps", "7", "--model.arch=tiny", "--train.progress", "false"]))
    assert (cfg.train.steps, cfg.model.arch, cfg.train.progress) == (7, "tiny", False)


def test_classify_takes_folders_writes_results_and_names_a_directory(images, tmp_path, capsys):
    (images / "sub").mkdir()
    Image.new("RGB", (20, 20), (9, 9, 9)).save(images / "sub" / "deep.png")
    out = tmp_path / "preds.csv"
    assert main(["classify", "--device", "cpu", "--model", "tiny", "--labels", "a,b,c", "--out", str(out),
                 str(images)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "image,rank,label,prob" and len(lines) == 1 + 4 * 3  # 4 images, top 3 each
    assert main(["classify", "--device", "cpu", "--model", "tiny", "--labels", "a,b", "--out",
                 str(tmp_path / "p.json"), str(images / "im0.png")]) == 0
    rows = json.loads((tmp_path / "p.json").read_text())
    assert rows[0]["image"].endswith("im0.png") and abs(sum(r["prob"] for r in rows[0]["top"]) - 1) < 1e-5
    # A folder where an image is expected (here the folder has no images of its own: an empty one).
    (tmp_path / "empty").mkdir()
    from dualtower.images import ImageDecodeError, open_image

    with pytest.raises(ImageDecodeError, match="is a directory"):
        open_image(tmp_path / "empty")


def test_plots_use_round_ticks_a_signed_scale_and_never_minus_zero(tmp_path):
    from dualtower.plots import cell_text, heat_map, nice_ticks

    assert nice_ticks(1, 300) == [100.0, 200.0, 300.0]
    assert nice_ticks(3.71, 4.93) == [4.0, 4.5]
    assert nice_ticks(-0.61, 0.61) == [-0.5, 0.0, 0.5]
    assert [cell_text(v) for v in (-0.001, -0.004, 0.25, 3.0, -0.2)] == ["0.00", "0.00", "0.25", "3", "-0.20"]
    heat_map([[0.5, 0.1], [0.2, 0.4]], tmp_path / "plain.png", "t", ["a", "b"], ["c", "d"])
    heat_map([[0.5, -0.1], [-0.2, 0.4]], tmp_path / "signed.png", "t", ["a", "b"], ["c", "d"])
    plain, signed = Image.open(tmp_path / "plain.png"), Image.open(tmp_path / "signed.png")
    assert signed.width == plain.width + 80  # the colour bar
    bar = np.asarray(signed.convert("RGB"))[112:179, plain.width + 18]  # top (positive) to bottom (negative)
    assert bar[0][0] > bar[0][2] and bar[-1][2] > bar[-1][0]  # red above, blue below


def test_every_option_has_help_and_shows_its_default(capsys):
    from dualtower.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0])))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}: no help text"
        with pytest.raises(SystemExit):
            sub.parse_args(["--help"])
        out = capsys.readouterr().out
        for action in sub._actions:
            if action.option_strings and action.default not in (None, False, "==SUPPRESS=="):
                assert f"default: {action.default}" in " ".join(out.split()) or "default" in (action.help or ""), \
                    f"{name} {action.option_strings}: default not shown"
