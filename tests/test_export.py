"""Export to ONNX and torch.export, run on ONNX Runtime: equal to PyTorch for every family (CLIP, quick-GELU, EVA02's
2-D RoPE, SigLIP's attention-pool head, InternViT's RMSNorm / QK-norm / layer scale, InternVL-C's head), at two
batch sizes and two text lengths (one longer than the example the graph was exported with); fp16 and int8 close
to fp32; the runtime imports no torch."""

import json
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

import dualtower
import dualtower.onnx
from dualtower.origin import Origin
from dualtower.archs import get_config
from dualtower.cli import main
from dualtower.export import export

from .conftest import CAPTIONS

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _small(name: str):
    cfg = get_config(name)
    block = dict(width=64, depth=2, heads=4, mlp_dim=128)
    v = replace(cfg.vision, image_size=28, patch_size=14, **block)
    if v.pool_heads:
        v = replace(v, pool_heads=4)
    text = replace(cfg.text, context_length=24, **block) if cfg.text is not None else None
    return cfg.replace(name=f"small-{name}", embed_dim=64, vision=v, text=text,
                       preprocess=replace(cfg.preprocess, image_size=28))


def _perturbed(cfg, seed=0):
    """Random weights with the norms, biases and scales moved off their constant init, so they are tested."""
    model = dualtower.create_model(cfg, seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


# The default run exports four families (each export takes several seconds); CI's slow run takes the rest.
FAMILIES = ["tiny", "EVA02-B-16", "ViT-B-16-SigLIP", "PE-Core-T-16-384",
            *[pytest.param(n, marks=pytest.mark.slow) for n in ("tiny-quickgelu", "InternViT-300M-448px",
                                                                 "InternVL-C-vision", "tiny-post-rms")]]


def _ids(model, n, length):
    cfg = model.cfg.text
    if model.cfg.tokenizer == "clip-bpe":
        return dualtower.get_tokenizer(model)(CAPTIONS[:n] * (n // len(CAPTIONS[:n]) or 1), context_length=length)[:n]
    g = torch.Generator().manual_seed(length)
    ids = torch.randint(2, cfg.vocab_size, (n, length), generator=g)
    if cfg.pool == "eot":
        ids[:, -1] = cfg.eot_id
    return ids


@pytest.mark.parametrize("name", FAMILIES)
def test_onnx_runtime_equals_pytorch_for_every_family(name, tmp_path):
    cfg = get_config(name) if name.startswith("tiny") else _small(name)
    model = _perturbed(cfg)
    export(model, tmp_path / "onnx")
    import dualtower.onnx

    runtime = dualtower.onnx.load(tmp_path / "onnx")
    size = cfg.vision.image_size
    for batch in (1, 5):
        pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            ref = model.encode_image(pixels).numpy()
        got = runtime.encode_image(pixels.numpy())
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max(), f"{name} image, batch {batch}"
    if model.text is None:
        assert not (tmp_path / "onnx" / "text.onnx").exists()
        return
    context = cfg.text.context_length
    for batch, length in ((1, context), (5, context), (5, 12)):  # the graph was exported at length 8
        ids = _ids(model, batch, length)
        with torch.no_grad():
            ref = model.encode_text(ids).numpy()
        got = runtime.encode_text(ids.numpy())
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max(), f"{name} text, batch {batch}, length {length}"


SIZES = ((28, 28), (42, 70), (100, 37))  # the trained size, then others (37: not a multiple of the patch)


@pytest.mark.parametrize("name", ["EVA02-B-16", "ViT-B-16-SigLIP",
                                  *[pytest.param(n, marks=pytest.mark.slow)
                                    for n in ("PE-Core-T-16-384", "InternViT-300M-448px")]])
def test_dynamic_size_export_takes_any_image_size_as_pytorch_does(name, tmp_path):
    """--dynamic-size: one graph for every height and width, equal to encode_image(interpolate_pos=True), the
    positional embeddings resized and (EVA02) the rotary angles computed in the graph."""
    import dualtower.onnx

    model = _perturbed(_small(name))
    export(model, tmp_path / "onnx", dynamic_size=True)
    runtime = dualtower.onnx.load(tmp_path / "onnx")
    assert runtime.meta["dynamic_size"] is True
    for i, (h, w) in enumerate(SIZES):
        pixels = torch.randn(1 + 2 * i, 3, h, w, generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            ref = model.encode_image(pixels, interpolate_pos=True).numpy()
        got = runtime.encode_image(pixels.numpy())
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max(), (name, h, w)
    fixed = tmp_path / "fixed"
    export(model, fixed)
    with pytest.raises(ValueError, match="dynamic-size takes other sizes"):
        dualtower.onnx.load(fixed).encode_image(np.zeros((1, 3, 42, 70), np.float32))


def test_torch_export_programs_equal_eager(tmp_path):
    model = _perturbed(_small("EVA02-B-16"))
    export(model, tmp_path / "pt2", format="torch-export", dynamic_size=True)
    image = torch.export.load(tmp_path / "pt2" / "image.pt2").module()
    text = torch.export.load(tmp_path / "pt2" / "text.pt2").module()
    ids = _ids(model, 4, 20)
    with torch.no_grad():
        got, ref = text(ids), model.encode_text(ids)
        assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()
        for h, w in SIZES:
            pixels = torch.randn(3, 3, h, w)
            got, ref = image(pixels), model.encode_image(pixels, interpolate_pos=True)
            assert (got - ref).abs().max() <= 1e-5 * ref.abs().max(), (h, w)
    config = json.loads((tmp_path / "pt2" / "config.json").read_text())
    assert config["runtime"] == "torch-export" and config["graphs"]["text"]["file"] == "text.pt2"


@pytest.mark.slow
def test_aot_inductor_packages_equal_eager(tmp_path, capsys):
    """--aot compiles both programs with AOTInductor (about a minute each on 2 cores); load_programs runs them."""
    from dualtower.export import load_programs

    model = _perturbed(get_config("tiny"))
    dualtower.save(model, tmp_path / "ckpt")
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "aot"), "--format", "torch-export", "--aot"]) == 0
    assert "image.aoti.pt2" in capsys.readouterr().out
    programs = load_programs(tmp_path / "aot")
    pixels, ids = torch.randn(5, 3, 32, 32), _ids(model, 3, 16)
    with torch.no_grad():
        for got, ref in ((programs["image"](pixels), model.encode_image(pixels)),
                         (programs["text"](ids), model.encode_text(ids))):
            assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()
    assert main(["export", "tiny", str(tmp_path / "x"), "--aot"]) == 2
    assert "aot (AOTInductor packages) is for format torch-export" in capsys.readouterr().err


def test_fp16_and_int8_stay_close_and_classify_the_digits_as_fp32_does(trained_digits, tmp_path):
    """fp16 / int8 against fp32: cosine >= 0.99 per embedding, and zero-shot top-1 on the held-out digits within
    1 point, with a model trained on the digits."""
    import dualtower.onnx
    from dualtower.data import open_source
    from dualtower.eval.templates import HELD_OUT

    model = dualtower.load(trained_digits)
    source = open_source("builtin:digits:test")
    images = [source.load(i).image for i in range(len(source))]
    labels = np.array([source.load(i).label for i in range(len(source))])
    prompts = [t.format(c=c) for c in source.classes for t in HELD_OUT["digits"]]
    results = {}
    for precision in ("fp32", "fp16", "int8"):
        report = export(model, tmp_path / precision, precision=precision)
        runtime = dualtower.onnx.load(tmp_path / precision)
        img, txt = runtime.embed_images(images), runtime.embed_texts(prompts)
        classes = txt.reshape(len(source.classes), -1, txt.shape[1]).mean(1)
        top1 = float(((img @ classes.T).argmax(1) == labels).mean())
        results[precision] = (img, txt, top1, sum(report.files.values()))
    img32, txt32, top32, size32 = results["fp32"]
    for precision in ("fp16", "int8"):
        img, txt, top1, size = results[precision]
        assert (img * img32).sum(1).min() >= 0.99 and (txt * txt32).sum(1).min() >= 0.99, precision
        assert abs(top1 - top32) <= 0.01, (precision, top1, top32)
        assert size < size32, precision


def test_the_runtime_needs_no_torch_and_the_cli_exports(tmp_path, capsys):
    assert main(["export", "tiny", str(tmp_path / "out"), "--normalize"]) == 0
    assert "image.onnx" in capsys.readouterr().out
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"image.onnx", "text.onnx", "config.json", "README.md", "bpe_simple_vocab_16e6.txt.gz", "tokenizer.json",
            "special_tokens_map.json"} <= files  # a fast tokenizer for other runtimes (issue 33, item 8)
    recipe = (tmp_path / "out" / "README.md").read_text()  # the long side is truncated, as our transform does
    assert "floor(32 x long / short), truncated, not rounded" in recipe and "optimum" in recipe
    script = f"""
import sys
sys.modules["torch"] = None  # any import of torch fails
import numpy as np
from PIL import Image
import dualtower.onnx
from dualtower.origin import Origin
m = dualtower.onnx.load({str(tmp_path / "out")!r})
img = m.embed_images([Image.new("RGBA", (40, 30), (200, 10, 10, 128)), Image.new("L", (20, 50), 90)])
txt = m.embed_texts(["a photo of a cat", "a dog"])
assert img.shape == (2, 48) and txt.shape == (2, 48)
assert np.allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
print("ok", "torch" in sys.modules and sys.modules["torch"] is not None)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok False"
    assert main(["export", "tiny", str(tmp_path / "out2"), "--format", "torch-export", "--precision", "int8"]) == 2
    assert "torch-export writes fp32" in capsys.readouterr().err


def test_classify_and_embed_run_on_onnx_runtime_as_on_pytorch(tmp_path, photos, capsys):
    """`--runtime onnx` with an export folder gives the probabilities and embeddings PyTorch gives; the command
    line on that path imports no torch."""
    model = _perturbed(get_config("tiny"))
    dualtower.save(model, tmp_path / "ckpt")
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "onnx")]) == 0
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        photos[name].save(folder / f"{name}.png")
    runs = {}
    for runtime, where in (("torch", "ckpt"), ("onnx", "onnx")):
        assert main(["classify", "--model", str(tmp_path / where), "--runtime", runtime, "--labels",
                     "cat,cup,person", "--device", "cpu", "--out", str(tmp_path / f"{runtime}.json"),
                     str(folder)] if runtime == "torch" else
                    ["classify", "--model", str(tmp_path / where), "--runtime", runtime, "--labels",
                     "cat,cup,person", "--out", str(tmp_path / f"{runtime}.json"), str(folder)]) == 0
        assert main(["embed", "--model", str(tmp_path / where), "--runtime", runtime, "--data", str(folder),
                     "--workers", "0", "--out", str(tmp_path / f"{runtime}.npz")]) == 0
        runs[runtime] = (json.loads((tmp_path / f"{runtime}.json").read_text()),
                         np.load(tmp_path / f"{runtime}.npz")["image_embeds"])
    capsys.readouterr()
    (torch_rows, torch_emb), (onnx_rows, onnx_emb) = runs["torch"], runs["onnx"]
    assert np.abs(onnx_emb - torch_emb).max() < 1e-5
    for a, b in zip(torch_rows, onnx_rows):
        assert [t["label"] for t in a["top"]] == [t["label"] for t in b["top"]]
        assert max(abs(x["prob"] - y["prob"]) for x, y in zip(a["top"], b["top"])) < 1e-5
    script = ("import sys; sys.modules['torch'] = None\nfrom dualtower.cli import main\n"
              f"sys.exit(main(['embed', '--runtime', 'onnx', '--model', {str(tmp_path / 'onnx')!r}, '--data', "
              f"{str(folder)!r}, '--out', {str(tmp_path / 'x.npz')!r}]))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_an_export_config_is_checked_field_by_field(tmp_path):
    """A config.json edited by hand ("normalized": "false" gave unnormalised embeddings; a NaN logit scale printed
    NaN probabilities with exit 0) is refused naming the field, before a session starts."""
    model = dualtower.create_model("tiny", seed=1)
    export(model, tmp_path / "good")
    good = json.loads((tmp_path / "good" / "config.json").read_text())
    assert dualtower.onnx.load(tmp_path / "good").normalized is False
    cases = {"normalized": ("false", "normalized \"false\" is not true or false"),
             "logit_scale": (float("nan"), "logit_scale NaN is not a finite number above 0"),
             "precision": ("int4", "precision \"int4\" is not one of"),
             "version": (7, "version 7 is not 1")}
    for field_name, (value, message) in cases.items():
        folder = tmp_path / field_name
        shutil.copytree(tmp_path / "good", folder)
        (folder / "config.json").write_text(json.dumps({**good, field_name: value}))
        with pytest.raises(ValueError, match=message):
            dualtower.onnx.load(folder)
    folder = tmp_path / "graph-outside"
    shutil.copytree(tmp_path / "good", folder)
    graphs = {**good["graphs"], "text": {**good["graphs"]["text"], "file": "../good/text.onnx"}}
    (folder / "config.json").write_text(json.dumps({**good, "graphs": graphs}))
    with pytest.raises(ValueError, match="not a file of its folder"):
        dualtower.onnx.load(folder)


@pytest.mark.parametrize("kind", ["clip-bpe", "sentencepiece", "tokenizer.json"])
def test_an_export_embeds_text_with_every_tokenizer_kind(kind, tmp_path):
    """The export carries the model's own tokenizer files from the one list (config.TOKENIZER_FILES): a
    fixed-resolution SigLIP 2 model (Gemma tokenizer.json) shipped without its tokenizer.json and could not embed
    text; SigLIP's spiece.model and the bundled CLIP vocabulary travel as before. Texts embed as PyTorch does."""
    arch = {"clip-bpe": "tiny", "sentencepiece": "ViT-B-16-SigLIP", "tokenizer.json": "ViT-B-16-SigLIP2"}[kind]
    cfg = _small(arch)
    files = tmp_path / "tokenizer"
    if kind == "tokenizer.json":
        from .test_tokenizer_json import _make_gemma_like

        vocab = _make_gemma_like(files)
        cfg = cfg.replace(text=replace(cfg.text, vocab_size=vocab))
    elif kind == "sentencepiece":  # SigLIP's kind: <pad> 0, </s> 1, <unk> 2
        import sentencepiece as spm

        files.mkdir()
        (files / "corpus.txt").write_text("\n".join(CAPTIONS * 50 + ["a photo of a cat", "two dogs"] * 50))
        spm.SentencePieceTrainer.train(input=str(files / "corpus.txt"), model_prefix=str(files / "spiece"),
                                       vocab_size=120, model_type="unigram", pad_id=0, eos_id=1, unk_id=2,
                                       bos_id=-1, minloglevel=2, hard_vocab_limit=False)
        cfg = cfg.replace(text=replace(cfg.text, vocab_size=120))
    model = _perturbed(cfg)
    if kind != "clip-bpe":
        model.origin = Origin(tokenizer_dir=files)
    dualtower.save(model, tmp_path / "ckpt")
    model = dualtower.load(tmp_path / "ckpt")
    export(model, tmp_path / "onnx")
    runtime = dualtower.onnx.load(tmp_path / "onnx")
    texts = ["a photo of a cat", "two dogs playing in the snow"]
    with torch.no_grad():
        ref = model.encode_text(dualtower.get_tokenizer(model)(texts), normalize=True).numpy()
    got = runtime.embed_texts(texts)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max(), kind
