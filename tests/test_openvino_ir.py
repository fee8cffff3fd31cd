"""OpenVINO's own models (`dualtower export --format openvino`): fp32 equal to PyTorch, int8 quantised by NNCF on
calibration photos and captions, held to the int8 self-check, run by the OpenVINO runtime and the commands."""

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import dualtower
import dualtower.onnx
from dualtower import runtimes
from dualtower.cli import main
from dualtower.errors import UserError
from dualtower.export import export
from dualtower.runtimes.openvino import OpenVinoModel

# Not imported here: importing openvino at collection would bind absl's logging handler to pytest's capture of
# the whole session, which a later `serve` test's logging set-up closes (dualtower imports it through
# runtimes.openvino.import_openvino, which points that handler at the process's own stderr).
pytestmark = pytest.mark.skipif(importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None,
                                reason="needs openvino and nncf (pip install 'dualtower[nncf]')")

HELD_OUT = ("astronaut", "coffee", "chelsea", "rocket", "camera")  # the calibration uses scikit-learn's photos only


def _cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _reference(model, images, texts=None):
    from dualtower.runtimes import as_embedder

    embedder = as_embedder(model)
    return embedder.embed_images(images), None if texts is None else embedder.embed_texts(texts)


def test_fp32_openvino_models_equal_pytorch_and_name_their_runtime(tmp_path, photos):
    torch.manual_seed(0)
    model = dualtower.create_model("tiny").eval()
    report = export(model, tmp_path / "ov", format="openvino")
    assert {"image.xml", "image.bin", "text.xml", "text.bin"} <= set(report.files)
    assert not list((tmp_path / "ov").glob("*.onnx"))  # the ONNX step is not left behind
    meta = json.loads((tmp_path / "ov" / "config.json").read_text())
    assert meta["runtime"] == "openvino" and meta["graphs"]["image"]["file"] == "image.xml"
    readme = (tmp_path / "ov" / "README.md").read_text()
    assert 'runtimes.open("ov", runtime="openvino")' in readme and "--runtime openvino" in readme
    assert runtimes.runtime_of(str(tmp_path / "ov")) == "openvino"

    texts = ["a photo of a cat", "two dogs playing in the snow", "東京の夜景"]
    images = [photos[n] for n in HELD_OUT]
    img32, txt32 = _reference(model, images, texts)
    on_ov = OpenVinoModel(tmp_path / "ov", precision="fp32")
    assert on_ov.precision == "fp32" and on_ov.checked.passed
    img, txt = on_ov.embed_images(images), on_ov.embed_texts(texts)
    assert np.abs(img - img32).max() / np.abs(img32).max() <= 1e-4
    assert np.abs(txt - txt32).max() / np.abs(txt32).max() <= 1e-4

    with pytest.raises(UserError, match="a dualtower openvino export, not onnx; run it with --runtime openvino"):
        dualtower.onnx.load(tmp_path / "ov")
    (tmp_path / "ov" / "text.bin").unlink()
    with pytest.raises(UserError, match="text.bin is missing"):
        OpenVinoModel(tmp_path / "ov")
    (tmp_path / "ov" / "text.bin").write_bytes(b"\0" * 64)  # damaged weights: named, not OpenVINO's trace
    with pytest.raises(UserError, match=r"text.xml: OpenVINO cannot run it \(.*\); export it again"):
        OpenVinoModel(tmp_path / "ov")


def test_int8_is_quantised_by_openvino_and_classifies_the_digits_as_fp32_does(trained_digits, tmp_path):
    """A model trained on the digits: int8 embeddings at cosine >= 0.99 to PyTorch's fp32 and zero-shot top-1 on
    the held-out digits within 2 points, its products int8 (FakeQuantize in the graphs), files smaller."""
    from dualtower.data import open_source
    from dualtower.eval.templates import HELD_OUT as TEMPLATES

    model = dualtower.load(trained_digits)
    report = export(model, tmp_path / "int8", format="openvino", precision="int8")
    fp32 = export(model, tmp_path / "fp32", format="openvino")
    assert sum(report.files.values()) < 0.5 * sum(fp32.files.values())
    for graph in ("image", "text"):
        assert (tmp_path / "int8" / f"{graph}.xml").read_text().count('type="FakeQuantize"') >= 4, graph
    source = open_source("builtin:digits:test")
    images = [source.load(i).image for i in range(len(source))]
    labels = np.array([source.load(i).label for i in range(len(source))])
    prompts = [t.format(c=c) for c in source.classes for t in TEMPLATES["digits"]]
    img32, txt32 = _reference(model, images, prompts)
    on_ov = OpenVinoModel(tmp_path / "int8")
    assert on_ov.precision == "int8" and on_ov.checked.passed and on_ov.checked.floor == 0.99
    img, txt = on_ov.embed_images(images), on_ov.embed_texts(prompts)
    assert _cosines(img, img32).min() >= 0.99 and _cosines(txt, txt32).min() >= 0.99

    def top1(img, txt):
        classes = txt.reshape(len(source.classes), -1, txt.shape[1]).mean(1)
        return float(((img @ classes.T).argmax(1) == labels).mean())

    assert abs(top1(img, txt) - top1(img32, txt32)) <= 0.02


@pytest.mark.parametrize("arch", ["tiny-fastvit", "tiny-naflex"])
def test_int8_of_a_conv_tower_and_of_a_naflex_tower(arch, tmp_path, photos):
    """The convolutional tower takes NNCF's convolutional scheme, the NaFlex one its patches and mask as inputs.
    The image tower alone: a tiny random text tower is no measure of int8 (the digits' is). The NaFlex tower at
    width 256: at tiny's 64 (heads of 16) static int8 of the attention's output products alone costs 0.02 of
    cosine on these random weights (0.972 on one photo; 0.988 at width 128, 0.9925 at 256)."""
    cfg = dataclasses.replace(dualtower.get_config(arch), text=None)
    if arch == "tiny-naflex":
        cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, width=256, heads=8, mlp_dim=1024))
    torch.manual_seed(0)
    model = dualtower.create_model(cfg).eval()
    export(model, tmp_path / arch, format="openvino", precision="int8")
    images = [photos[n] for n in HELD_OUT]
    img32, _ = _reference(model, images)
    on_ov = OpenVinoModel(tmp_path / arch)
    assert on_ov.precision == "int8" and on_ov.checked.passed
    found = on_ov.embed_images(images)
    assert _cosines(found, img32).min() >= 0.99
    # A random tower embeds all images nearly alike; where the images' differences are a tenth of the embedding
    # or more (the NaFlex ViT; not the random FastViT, whose differences are 1e-3 of it), int8 keeps them too.
    centred, centred32 = found - found.mean(0), img32 - img32.mean(0)
    share = np.linalg.norm(centred32, axis=1).min() / np.linalg.norm(img32, axis=1).max()
    assert share < 0.1 or _cosines(centred, centred32).min() >= 0.9
    if arch == "tiny-fastvit":  # products in int8, depthwise convolutions left in floating point (openvino_ir)
        quantised = _quantised_inputs(tmp_path / arch / "image.xml")
        assert quantised["Convolution"] > 0 and quantised["GroupConvolution"] == 0, quantised


def _quantised_inputs(xml):
    """{operation type: how many of its operations read an int8-quantised activation (a FakeQuantize)}."""
    from collections import Counter

    from dualtower.runtimes.openvino import import_openvino

    ov = import_openvino()
    counts = Counter()
    for op in ov.Core().read_model(str(xml)).get_ops():
        source = op.input_value(0).get_node() if op.get_input_size() else None
        counts[op.get_type_name()] += source is not None and source.get_type_name() == "FakeQuantize"
    return counts


def _reverse_weights(folder):
    """Reverses the largest weight matrix of an OpenVINO image model along its last axis: it runs, and computes
    something else."""
    from dualtower.runtimes.openvino import import_openvino

    ov = import_openvino()
    core = ov.Core()
    model = core.read_model(str(folder / "image.xml"))
    weights = max((op for op in model.get_ops() if op.get_type_name() == "Constant"),
                  key=lambda op: op.get_output_size() and int(np.prod(op.get_output_shape(0))))
    reversed_ = ov.opset13.constant(weights.get_data()[..., ::-1].copy())
    weights.output(0).replace(reversed_.output(0))
    ov.save_model(model, str(folder / "new.xml"), compress_to_fp16=False)  # the read one is mapped from its .bin
    del model, weights
    for suffix in (".xml", ".bin"):
        (folder / f"new{suffix}").replace(folder / f"image{suffix}")


def test_a_corrupted_openvino_model_is_refused_and_an_export_that_fails_its_check_replaces_nothing(tmp_path):
    from dualtower import openvino_ir

    torch.manual_seed(0)
    export(dualtower.create_model("tiny").eval(), tmp_path / "ov", format="openvino")
    _reverse_weights(tmp_path / "ov")
    with pytest.raises(UserError, match=r"on OpenVINO \((fp32|bf16)\): refused by the self-check: .* image -?0\.\d+"):
        OpenVinoModel(tmp_path / "ov")
    with pytest.raises(UserError, match=r"the (fp32|bf16) model OpenVINO's quantisation made fails the self-check: "
                                        r"the probes' cosine to PyTorch's fp32 is image -?0\.\d+, text [\d.]+ \(floor "
                                        r"[\d.]+\); export it in fp32, or calibrate on photos like yours"):
        openvino_ir.check(tmp_path / "ov")

    # calibrated on one black image, every activation range is near zero: the export fails its own check, and the
    # folder it would have replaced is left as it was
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "black.png")
    export(dualtower.create_model("tiny").eval(), tmp_path / "good", format="openvino", precision="int8")
    before = {f.name: f.read_bytes() for f in (tmp_path / "good").iterdir()}
    with pytest.raises(UserError, match=r"the int8 model OpenVINO's quantisation made fails the self-check: .*image "
                                        r"0\.(9[0-8]|[0-8])\d*, "):  # below the floor of 0.99
        export(dualtower.create_model("tiny").eval(), tmp_path / "good", format="openvino", precision="int8",
               calibration=[str(tmp_path / "black.png")])
    assert {f.name: f.read_bytes() for f in (tmp_path / "good").iterdir()} == before


def test_the_commands_export_index_and_search_with_an_openvino_int8_model(tmp_path, capsys, caplog, photos):
    torch.manual_seed(0)
    dualtower.save(dualtower.create_model("tiny").eval(), tmp_path / "ckpt")
    (tmp_path / "photos").mkdir()
    for name in HELD_OUT:
        photos[name].convert("RGB").save(tmp_path / "photos" / f"{name}.jpg")
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"not a jpeg")
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "ov8"), "--format", "openvino", "--precision",
                 "int8", "--calibration", str(tmp_path / "photos")]) == 0
    out = capsys.readouterr()
    assert "image.xml" in out.out  # the broken calibration file is counted and logged, not fatal:
    assert any("calibration: 1 file(s) skipped" in r.getMessage() for r in caplog.records)
    assert main(["export", "tiny", str(tmp_path / "x"), "--format", "openvino", "--precision", "fp16"]) == 2
    assert "openvino writes fp32 or int8 models, not fp16" in capsys.readouterr().err
    assert main(["index", str(tmp_path / "photos"), "--model", str(tmp_path / "ov8"), "--runtime", "openvino",
                 "--out", str(tmp_path / "index")]) == 0
    capsys.readouterr()
    # the index records its model; search opens it on OpenVINO again without being told
    assert main(["search", str(tmp_path / "index"), "a cat", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert sorted(Path(h["path"]).stem for h in hits) == sorted(HELD_OUT)  # the broken file was skipped
    assert main(["index", str(tmp_path / "photos"), "--model", str(tmp_path / "ov8"), "--out",
                 str(tmp_path / "i2")]) == 2
    assert "an export for openvino (`dualtower export`), not a checkpoint; run it with --runtime openvino" in \
        capsys.readouterr().err
