"""Every command that takes --runtime gives the same results on PyTorch and on ONNX Runtime (an fp32 export of the
same weights): classify, embed, index, search and serve. The runtimes share one Embedder protocol
(dualtower.runtimes), so zero-shot, batching and pooling are one code path; only the towers' arithmetic differs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch

import dualtower
from dualtower.cli import COMMANDS, build_parser, main
from dualtower.runtimes import RUNTIMES, Embedder, as_embedder

pytest.importorskip("onnxruntime")
TOL = 1e-4  # fp32 ONNX Runtime against fp32 PyTorch: the same graph, other kernels


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A small model with perturbed weights (a random init's embeddings are nearly equal), its export, and a
    folder of images: real photos and digits."""
    from dualtower.data import open_source
    from dualtower.export import export

    root = tmp_path_factory.mktemp("runtimes")
    model = dualtower.create_model("tiny", seed=0)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    dualtower.save(model, root / "ckpt")
    export(dualtower.load(root / "ckpt"), root / "onnx")
    images = root / "images"
    images.mkdir()
    digits = open_source("builtin:digits:test")
    for i in range(12):
        digits.load(i).image.resize((48, 48)).save(images / f"digit{i:02d}.png")
    from sklearn.datasets import load_sample_images
    from PIL import Image

    for i, pixels in enumerate(load_sample_images().images):
        Image.fromarray(pixels).save(images / f"photo{i}.jpg")
    # OpenVINO runs the same export folder (at fp32 here: the tests pin DUALTOWER_PRECISION)
    return {"torch": root / "ckpt", "onnx": root / "onnx", "openvino": root / "onnx", "images": images, "root": root}


def _run(argv, capsys) -> str:
    assert main(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def _runtime_commands() -> set[str]:
    """The commands whose parser has --runtime."""
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices
    return {name for name, p in choices.items() if any(a.dest == "runtime" for a in p._actions)}


def test_every_runtime_command_is_covered_and_the_runtimes_are_one_protocol(models):
    # dedupe opens an index as search does (its vectors are stored: the runtime only loads the index's model)
    assert _runtime_commands() == {"classify", "dedupe", "embed", "index", "search", "serve"}, _runtime_commands()
    assert len(COMMANDS) == 18  # index-merge (`index merge`) opens no model
    embedders = {name: dualtower.runtimes.open(str(models[name]), name) for name in RUNTIMES}
    for name, embedder in embedders.items():
        assert isinstance(embedder, Embedder) and embedder.runtime == name
    torch_one = embedders["torch"]
    for name in set(RUNTIMES) - {"torch"}:
        other = embedders[name]
        assert torch_one.identity() == {**other.identity(), "source": None}  # same name, config, fp32 digest
        assert torch_one.logit_scale == pytest.approx(other.logit_scale, rel=1e-6)
        assert as_embedder(other) is other


def test_classify_and_embed_agree_across_runtimes(models, tmp_path, capsys):
    results = {}
    for runtime in RUNTIMES:
        _run(["classify", "--model", str(models[runtime]), "--runtime", runtime, "--labels", "zero,one,two,a photo",
              "--out", str(tmp_path / f"{runtime}.json"), str(models["images"])], capsys)
        _run(["embed", "--model", str(models[runtime]), "--runtime", runtime, "--data", "builtin:digits:test",
              "--text", "--workers", "1", "--out", str(tmp_path / f"{runtime}.npz")], capsys)
        results[runtime] = (json.loads((tmp_path / f"{runtime}.json").read_text()),
                            np.load(tmp_path / f"{runtime}.npz"))
    rows_t, npz_t = results["torch"]
    for runtime in set(RUNTIMES) - {"torch"}:
        rows_o, npz_o = results[runtime]
        assert len(rows_t) == len(rows_o) == 14  # 12 digits, 2 photos
        for a, b in zip(rows_t, rows_o):
            assert a["image"] == b["image"]
            probs_a = {t["label"]: t["prob"] for t in a["top"]}
            probs_b = {t["label"]: t["prob"] for t in b["top"]}
            assert probs_a.keys() == probs_b.keys(), a["image"]
            assert max(abs(probs_a[k] - probs_b[k]) for k in probs_a) < TOL, runtime
        assert list(npz_t["ids"]) == list(npz_o["ids"]) and len(npz_t["ids"]) == 360
        assert list(npz_t["captions"]) == list(npz_o["captions"])
        for key in ("image_embeds", "text_embeds"):
            assert np.abs(npz_t[key] - npz_o[key]).max() < TOL, (runtime, key)


def _hits(out: str) -> list[tuple[str, float]]:
    return [(h["key"], h["score"]) for h in json.loads(out)]


def _same_hits(a, b) -> None:
    assert [k for k, _ in a] == [k for k, _ in b]
    assert max(abs(x - y) for (_, x), (_, y) in zip(a, b)) < TOL


def test_index_and_search_agree_across_runtimes(models, tmp_path, capsys):
    """An index built on either runtime holds the same vectors; searched by either runtime (by text and by
    image) it answers with the same items in the same order."""
    from dualtower.search import Store

    for runtime in RUNTIMES:
        _run(["index", str(models["images"]), "--model", str(models[runtime]), "--runtime", runtime,
              "--workers", "1", "--out", str(tmp_path / runtime)], capsys)
    stores = {r: Store(tmp_path / r) for r in RUNTIMES}
    assert len({s.model["weights_sha256"] for s in stores.values()}) == 1
    vectors = {r: s.vectors()[s.live_rows()[0]].astype(np.float32) for r, s in stores.items()}
    for runtime in set(RUNTIMES) - {"torch"}:
        assert np.abs(vectors["torch"] - vectors[runtime]).max() < 2e-3, runtime  # stored as float16
    for store in stores.values():
        store.close()
    queries = [["a photo of a digit"], ["zero"], ["--image", str(models["images"] / "digit03.png")]]
    for index in RUNTIMES:
        for query in queries:
            answers = [_hits(_run(["search", str(tmp_path / index), *query, "--json", "-k", "8", "--runtime", runtime,
                                   "--model", str(models[runtime])], capsys)) for runtime in RUNTIMES]
            assert len(answers[0]) == 8
            for other in answers[1:]:
                _same_hits(answers[0], other)


def test_serve_answers_alike_on_both_runtimes(models, tmp_path, capsys):
    import socket

    _run(["index", str(models["images"]), "--model", str(models["torch"]), "--workers", "0",
          "--out", str(tmp_path / "index")], capsys)
    answers = []
    for runtime in RUNTIMES:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        process = subprocess.Popen([sys.executable, "-m", "dualtower", "serve", str(tmp_path / "index"), "--runtime",
                                    runtime, "--model", str(models[runtime]), "--port", str(port)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read()
                    break
                except OSError:
                    assert process.poll() is None, process.stderr.read()
                    assert time.monotonic() < deadline, "the service did not start"
                    time.sleep(0.3)
            got = []
            for text in ("a photo of a digit", "zero", "a photo"):
                request = urllib.request.Request(f"http://127.0.0.1:{port}/search", method="POST",
                                                 data=json.dumps({"text": text, "k": 8}).encode(),
                                                 headers={"Content-Type": "application/json"})
                body = json.loads(urllib.request.urlopen(request, timeout=30).read())
                got.append([(h["key"], h["score"]) for h in body["results"]])
            answers.append(got)
        finally:
            process.terminate()
            process.wait(timeout=30)
    for first, *others in zip(*answers):
        assert len(first) == 8
        for other in others:
            _same_hits(first, other)


def test_an_index_built_from_an_export_opens_on_onnx_runtime_by_itself(models, tmp_path, capsys):
    """Issue 33, item 9: `search` of an index built with `--runtime onnx` needed `--runtime onnx --model` again and
    otherwise failed with a 1,400-character "no known format" line. The index records its export: `search`
    without flags opens it on ONNX Runtime; an export given as a PyTorch model is refused in one short line
    naming the flag."""
    _run(["index", str(models["images"]), "--model", str(models["onnx"]), "--runtime", "onnx", "--workers", "1",
          "--out", str(tmp_path / "index")], capsys)
    by_itself = _hits(_run(["search", str(tmp_path / "index"), "zero", "--json", "-k", "5"], capsys))
    named = _hits(_run(["search", str(tmp_path / "index"), "zero", "--json", "-k", "5", "--runtime", "onnx",
                        "--model", str(models["onnx"])], capsys))
    assert by_itself == named and len(by_itself) == 5
    assert main(["search", str(tmp_path / "index"), "zero", "--model", str(models["onnx"])]) == 2
    err = capsys.readouterr().err.strip()
    assert "--runtime onnx" in err and "export" in err and len(err) < 300 and len(err.splitlines()) == 1, err
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text('{"model_type": "bert"}')
    assert main(["classify", "--model", str(tmp_path / "odd"), "--labels", "a,b", str(models["images"])]) == 2
    err = capsys.readouterr().err.strip()  # a folder of no format: the formats named, not described
    assert "no known format" in err and "hf-siglip" in err and len(err) < 400, err
