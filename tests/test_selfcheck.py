"""The self-check (fixed probes against PyTorch's fp32 reference, refused below a precision's floor) and
`--precision auto` (each tower at its fastest precision that passes it, chosen once per machine)."""

import importlib.util
import json

import numpy as np
import pytest
import torch

import dualtower
import dualtower.onnx
from dualtower import runtimes
from dualtower.cli import main
from dualtower.errors import UserError
from dualtower.runtimes import auto, probes


def _tiny(seed=0):
    torch.manual_seed(seed)
    return dualtower.create_model("tiny").eval()


def _hostile_text(model):
    """The same fp32 function, written so that bf16 cannot hold it: every token embedding carries +1000 that the
    positional embedding takes away again (fp32 keeps the small difference; bf16 rounds 1000 to steps of 4)."""
    with torch.no_grad():
        model.text.token_embed.weight += 1000.0
        model.text.pos_embed -= 1000.0
    return model


def _corrupt(path):
    """Reverses the largest weight matrix of an ONNX graph along its last axis: a graph that runs and is wrong."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path))
    init = max(graph.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init)[..., ::-1].copy(), init.name))
    onnx.save(graph, str(path))


def test_probes_are_fixed_images_and_texts():
    a, b = probes.images(), probes.images()
    assert len(a) == 4 and all(x.mode == "RGB" and x.size == (256, 256) for x in a)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert len({np.asarray(x).tobytes() for x in a}) == 4  # four different pictures


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_every_export_records_probes_and_passes_its_own_check(precision, tmp_path):
    from dualtower.export import export

    model = _tiny()
    export(model, tmp_path / "x", precision=precision)
    meta = json.loads((tmp_path / "x" / "config.json").read_text())
    assert meta["probes"]["file"] == "probes.safetensors" and meta["probes"]["texts"] == list(probes.TEXTS)
    reference = probes.load(tmp_path / "x", meta["probes"])
    ours = probes.embed(runtimes.as_embedder(model))
    for tower in ("image", "text"):  # the reference is PyTorch's fp32 embedding of the probes
        np.testing.assert_allclose(reference[tower], ours[tower], rtol=0, atol=1e-6)
    loaded = dualtower.onnx.load(tmp_path / "x")
    assert loaded.checked.passed and loaded.checked.floor == probes.FLOORS[precision]
    assert set(loaded.checked.cosines) == {"image", "text"}
    from dualtower.runtimes.openvino import OpenVinoModel

    on_openvino = OpenVinoModel(tmp_path / "x", precision="bf16")  # fp32 where the processor has no bf16 units
    assert on_openvino.precision == (precision if precision != "fp32" else
                                     "bf16" if auto.bf16_units(torch.device("cpu")) else "fp32")
    assert on_openvino.checked.passed and on_openvino.checked.floor == probes.FLOORS[on_openvino.precision]


def test_a_corrupted_export_is_refused_by_the_library_and_the_commands(tmp_path, capsys):
    from dualtower.export import export

    export(_tiny(), tmp_path / "x")
    _corrupt(tmp_path / "x" / "image.onnx")
    with pytest.raises(UserError, match=r"refused by the self-check: .*image 0\.\d+, text 1\.00000 \(floor 0\.9999\)"):
        dualtower.onnx.load(tmp_path / "x")
    assert dualtower.onnx.load(tmp_path / "x", check=False).checked is None  # asked not to check
    from dualtower.runtimes.openvino import OpenVinoModel

    for precision in ("fp32", "bf16"):  # the other runtime of exports holds them to the same reference
        with pytest.raises(UserError, match=r"on OpenVINO \((fp32|bf16)\): refused by the self-check"):
            OpenVinoModel(tmp_path / "x", precision=precision)
    (tmp_path / "photos").mkdir()
    for i, im in enumerate(probes.images()):
        im.save(tmp_path / "photos" / f"{i}.png")
    capsys.readouterr()
    assert main(["index", str(tmp_path / "photos"), "--model", str(tmp_path / "x"), "--runtime", "onnx",
                 "--out", str(tmp_path / "index")]) == 2
    err = capsys.readouterr().err
    assert "refused by the self-check" in err and "Traceback" not in err
    assert not (tmp_path / "index").exists()  # refused before anything was written


def test_a_missing_or_malformed_probe_record_is_named(tmp_path):
    from dualtower.export import export

    export(_tiny(), tmp_path / "x")
    config = tmp_path / "x" / "config.json"
    meta = json.loads(config.read_text())
    (tmp_path / "x" / "probes.safetensors").rename(tmp_path / "probes.bak")
    with pytest.raises(UserError, match="names probes.safetensors, which is missing"):
        dualtower.onnx.load(tmp_path / "x")
    (tmp_path / "probes.bak").rename(tmp_path / "x" / "probes.safetensors")
    config.write_text(json.dumps({**meta, "probes": {"file": "../elsewhere"}}))
    with pytest.raises(UserError, match="probes is not a record"):
        dualtower.onnx.load(tmp_path / "x")
    config.write_text(json.dumps({k: v for k, v in meta.items() if k != "probes"}))  # an export made before probes
    assert dualtower.onnx.load(tmp_path / "x").checked is None


def test_bf16_that_cannot_hold_the_model_is_refused_on_pytorch():
    from dualtower.runtimes.pytorch import TorchEmbedder

    embedder = TorchEmbedder(_tiny(), precision="bf16")  # an ordinary model passes
    assert embedder.precision == {"image": "bf16", "text": "bf16"}
    with pytest.raises(UserError, match=r"refused by the self-check: .* image 0\.99\d+, text 0\.\d+ \(floor 0\.999\)"):
        TorchEmbedder(_hostile_text(_tiny()), precision="bf16")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DUALTOWER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "precision-auto.json"


def _seed(model, cache, ratio):
    """What an earlier start on this machine measured: bf16 at `ratio` times fp32's rate, for both towers."""
    device = torch.device("cpu")
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({auto._key(model, t, device): {"bf16_vs_fp32": ratio} for t in ("image", "text")}))


def test_auto_keeps_fp32_where_the_processor_has_no_bf16_units(cache, monkeypatch):
    monkeypatch.setattr(auto, "bf16_units", lambda device: None)
    model = _tiny()
    choice = auto.choose(model)
    assert choice.precision == {"image": "fp32", "text": "fp32"}
    assert "no bf16 matrix units" in choice.line and not cache.exists()  # nothing to measure


def test_auto_takes_bf16_where_it_is_faster_and_passes_the_check(cache, monkeypatch):
    monkeypatch.setattr(auto, "bf16_units", lambda device: "AMX")
    model = _tiny()
    fp32 = probes.embed(runtimes.as_embedder(model))
    _seed(model, cache, 3.0)
    choice = auto.choose(model)
    assert choice.precision == {"image": "bf16", "text": "bf16"}
    assert "3.00x fp32's rate on AMX, cached; probes cosine" in choice.line
    assert next(model.visual.parameters()).dtype == torch.bfloat16 == next(model.text.parameters()).dtype
    assert model.logit_scale.dtype == torch.float32
    now = probes.compare(probes.embed(runtimes.as_embedder(model)), fp32, "bf16")
    assert now.passed and min(now.cosines.values()) < 1  # really bf16, and close

    slower = _tiny()
    _seed(slower, cache, 0.8)
    choice = auto.choose(slower)
    assert choice.precision == {"image": "fp32", "text": "fp32"} and "bf16 ran at 0.80x" in choice.line
    assert next(slower.visual.parameters()).dtype == torch.float32


def test_auto_falls_back_to_fp32_for_a_tower_that_fails_the_check(cache, monkeypatch):
    monkeypatch.setattr(auto, "bf16_units", lambda device: "AMX")
    model = _hostile_text(_tiny())
    _seed(model, cache, 3.0)
    choice = auto.choose(model)
    assert choice.precision == {"image": "bf16", "text": "fp32"}
    assert "text fp32 (bf16 is 3.00x faster on AMX but failed the self-check: text 0." in choice.line
    assert next(model.text.parameters()).dtype == torch.float32


def test_auto_measures_once_and_caches_per_machine(cache, monkeypatch):
    monkeypatch.setattr(auto, "bf16_units", lambda device: "AMX")
    model = _tiny()
    first = auto.choose(model)
    assert "measured now" in first.line or "bf16 ran at" in first.line
    stored = json.loads(cache.read_text())
    assert len(stored) == 2 and all(v["bf16_vs_fp32"] > 0 for v in stored.values())
    second = auto.choose(_tiny(seed=1))  # another model of the same shape: the measurement is reused
    assert "measured now" not in second.line
    assert first.precision == second.precision


def test_the_commands_say_what_auto_chose(tmp_path, cache, capsys, monkeypatch):
    monkeypatch.delenv("DUALTOWER_PRECISION", raising=False)
    path = tmp_path / "m"
    dualtower.save(_tiny(), path)
    (tmp_path / "photos").mkdir()
    for i, im in enumerate(probes.images()):
        im.save(tmp_path / "photos" / f"{i}.png")
    assert main(["embed", "--device", "cpu", "--workers", "0", "--model", str(path), "--data",
                 str(tmp_path / "photos"), "--out", str(tmp_path / "e.npz")]) == 0
    err = capsys.readouterr().err
    assert err.count("precision auto: image ") == 1
    monkeypatch.setenv("DUALTOWER_PRECISION", "fp16")
    assert main(["embed", "--device", "cpu", "--workers", "0", "--model", str(path), "--data",
                 str(tmp_path / "photos"), "--out", str(tmp_path / "e.npz")]) == 2
    assert "DUALTOWER_PRECISION='fp16' is not one of auto, fp32, bf16" in capsys.readouterr().err


def test_the_runtimes_of_exports_say_what_precision_they_run_at(tmp_path):
    from dualtower.export import export

    export(_tiny(), tmp_path / "x")
    said = []
    options = runtimes.OpenOptions(precision="bf16", note=said.append)
    assert runtimes.open(str(tmp_path / "x"), "onnx", options).precision == "fp32"
    assert said == [f"note: ONNX Runtime runs {tmp_path / 'x'} at the precision it was exported at (fp32), not bf16; "
                    "--runtime openvino runs an fp32 export in bf16"]
    said.clear()
    on_openvino = runtimes.open(str(tmp_path / "x"), "openvino", runtimes.OpenOptions(precision="auto",
                                                                                      note=said.append))
    expected = "bf16" if auto.bf16_units(torch.device("cpu")) else "fp32"
    assert on_openvino.precision == expected and len(said) == 1
    assert said[0].startswith(f"precision auto: OpenVINO runs {tmp_path / 'x'} at {expected} (") and "probes image" in said[0]


_NO_OPENVINO = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs openvino")


@_NO_OPENVINO
def test_runtime_auto_runs_an_export_on_the_faster_runtime_and_keeps_the_measurement(tmp_path, cache):
    """An ONNX export runs on ONNX Runtime or OpenVINO: both open it (passing their self-checks), are timed once on
    the probes, and the faster on the tower the command leans on wins (images for a batch command, texts for a
    service); a later start reads the rates back. A checkpoint stays on PyTorch; an export both refuse is named."""
    from dualtower.export import export

    export(_tiny(), tmp_path / "x")
    spec, said = str(tmp_path / "x"), []
    options = runtimes.OpenOptions(precision="auto", note=said.append)
    first = runtimes.open(spec, "auto", options)
    assert first.runtime in ("onnx", "openvino") and len(said) == 1
    assert said[0].startswith(f"runtime auto: {first.runtime} ({first.precision}), ") and "measured now" in said[0]
    assert "image rate" in said[0] and "probes image" in said[0]
    (key, rates), = [(k, v) for k, v in json.loads(cache.read_text()).items() if k.startswith("runtime:")]
    assert set(rates) == {"onnx", "openvino", "when"} and all(r > 0 for n in ("onnx", "openvino")
                                                              for r in rates[n].values())
    # the choice follows the rates: made so that OpenVINO embeds images faster and ONNX Runtime texts
    seeded = {**rates, "onnx": {"image": 1.0, "text": 100.0}, "openvino": {"image": 100.0, "text": 1.0}}
    cache.write_text(json.dumps({key: seeded}))
    said.clear()
    assert runtimes.open(spec, "auto", options).runtime == "openvino"
    service = runtimes.OpenOptions(precision="auto", note=said.append, service=True)
    assert runtimes.open(spec, "auto", service).runtime == "onnx"
    assert "100.00x openvino's text rate, cached" in said[1] and "100.00x onnx's image rate, cached" in said[0]

    said.clear()
    dualtower.save(_tiny(), tmp_path / "ckpt")
    assert runtimes.open(str(tmp_path / "ckpt"), "auto", runtimes.OpenOptions(precision="fp32", note=said.append)
                         ).runtime == "torch"
    assert said[-1].startswith("runtime auto: torch (a checkpoint runs on PyTorch")
    _corrupt(tmp_path / "x" / "image.onnx")
    with pytest.raises(UserError, match="no runtime installed runs it here: .*ONNX Runtime.*refused by the self-check"
                                        ".*OpenVINO.*refused by the self-check"):
        runtimes.open(spec, "auto", options)


@_NO_OPENVINO
def test_the_commands_take_runtime_auto(tmp_path, cache, capsys):
    from dualtower.export import export

    model = _tiny()
    export(model, tmp_path / "x")
    (tmp_path / "photos").mkdir()
    for i, im in enumerate(probes.images()):
        im.save(tmp_path / "photos" / f"{i}.png")
    assert main(["index", str(tmp_path / "photos"), "--model", str(tmp_path / "x"), "--runtime", "auto",
                 "--out", str(tmp_path / "index")]) == 0
    assert capsys.readouterr().err.count("runtime auto: ") == 1
    # the index's own model, opened on the fastest runtime again (no --model needed)
    assert main(["search", str(tmp_path / "index"), "a photo of a cat", "--runtime", "auto", "--json"]) == 0
    out = capsys.readouterr()
    assert len(json.loads(out.out)) == 4 and "runtime auto: " in out.err and ", cached" in out.err
