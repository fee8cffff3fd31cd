"""Every CPU at its roofline: this machine's matrix-product ceilings (fp32, bf16, int8 on torch, ONNX Runtime and
OpenVINO), then each tower in every precision and runtime, with images (or texts) per second, the share of the
ceiling of its precision and runtime reached, the ratio to open_clip fp32 in the same run, the cosine to our fp32,
and what `--precision auto` picks (checked never slower than fp32).

    .venv/bin/python benchmarks/roofline.py [--towers ViT-B-32,ViT-B-16,text,MobileCLIP2-S0] [--seconds 3]
    .venv/bin/python benchmarks/roofline.py --profile-onnx ViT-B-16    # where an int8 image graph's time goes

Random weights (none can be downloaded here): speed does not depend on them; the reduced precisions' cosine to fp32
does a little. Paths are timed in rounds, alternated, each path's best round kept.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from mobileclip import scratch  # noqa: E402

SHAPES = ((1600, 768, 3072), (2048, 2048, 2048), (4096, 1024, 4096))  # a ViT-B MLP at batch 32 x 50, two squares


def best_rate(fn, work: float, seconds: float) -> float:
    """work per second of `fn`: warmed once, then the fastest of repeated calls within `seconds`."""
    fn()
    best, start = np.inf, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return work / best


# ---------------------------------------------------------------------------------------------------- ceilings

def torch_ceiling(kind: str, seconds: float) -> float:
    rates = []
    for m, k, n in SHAPES:
        if kind == "int8":
            a, b = torch.randint(-127, 127, (m, k), dtype=torch.int8), torch.randint(-127, 127, (k, n), dtype=torch.int8)
            fn = lambda a=a, b=b: torch._int_mm(a, b)  # noqa: E731
        else:
            dtype = torch.float32 if kind == "fp32" else torch.bfloat16
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            fn = lambda a=a, b=b: a @ b  # noqa: E731
        rates.append(best_rate(fn, 2 * m * k * n / 1e9, seconds / len(SHAPES)))
    return max(rates)


def matmul_graph(path: Path, k: int, n: int) -> None:
    """An ONNX graph x (M, k) @ W (k, n), W a constant: what a tower's products look like to a runtime."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, n)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def runtime_ceilings(tmp: Path, seconds: float) -> dict:
    """GFLOP/s (GOP/s for int8) of ONNX Runtime fp32 and int8 (dynamic quantisation, as the export writes) and of
    OpenVINO fp32, bf16 and int8 (NNCF's static quantisation, as `export --format openvino` writes) on the same
    products."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = {"onnx fp32": [], "onnx int8": [], "openvino fp32": [], "openvino bf16": [], "openvino int8": []}
    try:
        import openvino as ov
    except ImportError:
        ov = None
    for i, (m, k, n) in enumerate(SHAPES):
        fp32, int8 = tmp / f"mm{i}.onnx", tmp / f"mm{i}-int8.onnx"
        matmul_graph(fp32, k, n)
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
        x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
        work = 2 * m * k * n / 1e9
        for name, path in (("onnx fp32", fp32), ("onnx int8", int8)):
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            out[name].append(best_rate(lambda s=session: s.run(None, {"x": x}), work, seconds / len(SHAPES)))
        if ov is not None:
            for name, hint in (("openvino fp32", "f32"), ("openvino bf16", "bf16")):
                compiled = ov.Core().compile_model(str(fp32), "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                                        "PERFORMANCE_HINT": "LATENCY"})
                out[name].append(best_rate(lambda c=compiled: c({"x": x}), work, seconds / len(SHAPES)))
            try:
                import nncf

                from dualtower.openvino_ir import _quiet
            except ImportError:
                continue
            with _quiet():
                quantised = nncf.quantize(ov.convert_model(str(fp32)), nncf.Dataset([{"x": x[:64]}]), subset_size=1)
            compiled = ov.Core().compile_model(quantised, "CPU", {"PERFORMANCE_HINT": "LATENCY"})
            out["openvino int8"].append(best_rate(lambda c=compiled: c({"x": x}), work, seconds / len(SHAPES)))
    return {k: max(v) for k, v in out.items() if v}


# ------------------------------------------------------------------------------------------------------ towers

def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        fn()
    return counter.get_total_flops()


def tower_paths(name: str, tmp: Path, batch: int):
    """(unit, items, GFLOP per item, {path: (fn, ceiling key)}) for one tower; `fn()` returns the embeddings."""
    import open_clip

    import dualtower
    import dualtower.onnx
    from cpu_speed import sentences
    from dualtower.export import export
    from dualtower.runtimes.openvino import OpenVinoModel

    arch = "ViT-B-32" if name == "text" else name
    peer = open_clip.create_model(arch).eval()
    ours = dualtower.create_model(arch, seed=0).eval().reparameterize()  # a conv tower folded; a ViT as it is
    image = name != "text"
    if image:  # real photos: a statically quantised graph's cosine means something only on what it was made for
        pixels = torch.from_numpy(photo_pixels(ours, batch))
        inputs, encode, peer_encode = pixels, "encode_image", peer.encode_image
    else:
        inputs = dualtower.get_tokenizer(ours)(sentences(batch))
        encode, peer_encode = "encode_text", peer.encode_text
    work = flops(lambda: getattr(ours, encode)(inputs)) / batch / 1e9
    exports = {}
    for precision in ("fp32", "int8"):
        folder = tmp / f"{arch}-{precision}"
        if not folder.exists():
            export(ours, folder, precision=precision)
        exports[precision] = folder
    bf16 = dualtower.create_model(arch, seed=0).eval().reparameterize().to(torch.bfloat16)
    ort32, ort8 = dualtower.onnx.load(exports["fp32"]), dualtower.onnx.load(exports["int8"])
    x = inputs.numpy()
    run = (lambda rt: (lambda: rt.encode_image(x))) if image else (lambda rt: (lambda: rt.encode_text(x)))
    paths = {
        "open_clip fp32": (lambda: peer_encode(inputs), "torch fp32"),
        "ours torch fp32": (lambda: getattr(ours, encode)(inputs), "torch fp32"),
        "ours torch bf16": (lambda: getattr(bf16, encode)(inputs).float(), "torch bf16"),
        "ours onnx fp32": (run(ort32), "onnx fp32"),
        "ours onnx int8": (run(ort8), "onnx int8"),
    }
    try:
        for hint in ("fp32", "bf16"):
            paths[f"ours openvino {hint}"] = (run(OpenVinoModel(exports["fp32"], precision=hint)), f"openvino {hint}")
        import importlib.util

        if importlib.util.find_spec("nncf") is None:  # the int8 export needs it
            raise ImportError("nncf")
        folder = tmp / f"{arch}-openvino-int8"
        if not folder.exists():
            export(ours, folder, format="openvino", precision="int8")
        paths["ours openvino int8"] = (run(OpenVinoModel(folder)), "openvino int8")
    except ImportError:
        pass
    return ("images/s" if image else "texts/s"), batch, work, paths, ours, inputs, encode


def photo_pixels(model, batch: int) -> np.ndarray:
    """(batch, 3, S, S) float32: skimage's bundled photos (and crops of them) through the model's preprocessing."""
    import skimage.data
    from PIL import Image

    from dualtower.images import ArrayTransform

    names = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "hubble_deep_field", "immunohistochemistry",
             "retina", "cat", "page")
    photos = [Image.fromarray(getattr(skimage.data, n)()).convert("RGB") for n in names if hasattr(skimage.data, n)]
    transform, out = ArrayTransform(model.cfg.preprocess), []
    while len(out) < batch:
        photo = photos[len(out) % len(photos)]
        w, h = photo.size
        cut = len(out) // len(photos) * 0.1  # the photo, then ever tighter centre crops
        out.append(transform(photo.crop((int(w * cut / 2), int(h * cut / 2), int(w * (1 - cut / 2)),
                                         int(h * (1 - cut / 2))))))
    return np.stack(out).astype(np.float32)


def auto_pick(ours, inputs, encode, name: str):
    """What --precision auto picks for this tower on the PyTorch runtime, and its rate vs fp32 on the same batch."""
    import copy

    from dualtower.runtimes.auto import choose

    model = copy.deepcopy(ours)
    choice = choose(model)
    tower = "image" if name != "text" else "text"
    return choice.precision[tower], choice.reasons[tower], (lambda: getattr(model, encode)(inputs))


def query_latency(fn, n: int = 100) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.99 * len(times)) - 1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--towers", default="ViT-B-32,ViT-B-16,text,MobileCLIP2-S0")
    p.add_argument("--seconds", type=float, default=3.0, help="per path and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch", type=int, default=16, help="images per batch (texts: 4x this)")
    p.add_argument("--profile-onnx", metavar="ARCH", help="only this: the image tower's int8 ONNX graph at opset 18 "
                                                          "and 20, images/s and each operator's share of the time")
    args = p.parse_args()
    if args.profile_onnx:
        return profile_onnx(args.profile_onnx, args.batch)
    import onnxruntime

    from dualtower.apps.machine import describe

    os.environ.setdefault("DUALTOWER_CACHE", str(scratch()))  # auto measures afresh in this run
    tmp = scratch()
    try:
        import openvino

        ov_version = openvino.__version__.split("-")[0]
    except ImportError:
        ov_version = "not installed"
    print(f"machine: {describe()}; onnxruntime {onnxruntime.__version__}; openvino {ov_version}; "
          f"{time.strftime('%Y-%m-%d')}\n")
    ceilings = {f"torch {k}": torch_ceiling(k, args.seconds) for k in ("fp32", "bf16", "int8")}
    ceilings.update(runtime_ceilings(tmp, args.seconds))
    print("## Matrix-product ceilings (best of three large products)\n")
    print("| runtime | precision | GFLOP/s (int8: GOP/s) |\n|---|---|---|")
    for key, value in ceilings.items():
        runtime, precision = key.split()
        print(f"| {runtime} | {precision} | {value:.0f} |")

    for name in args.towers.split(","):
        batch = args.batch * (4 if name == "text" else 1)
        unit, items, work, paths, ours, inputs, encode = tower_paths(name, tmp, batch)
        with torch.inference_mode():
            reference = getattr(ours, encode)(inputs).numpy()
            rates = {path: 0.0 for path in paths}
            outputs = {path: np.asarray(fn()) for path, (fn, _) in paths.items()}
            for _ in range(args.rounds):
                for path, (fn, _) in paths.items():
                    rates[path] = max(rates[path], best_rate(fn, items, args.seconds))
            picked, why, auto_fn = auto_pick(ours, inputs, encode, name)
            auto_rate = max(best_rate(auto_fn, items, args.seconds) for _ in range(args.rounds))
        title = f"{name} tower" if name != "text" else "ViT-B-32 text tower (real sentences)"
        print(f"\n## {title}, batch {items}, {work:.2f} GFLOP per item\n")
        print(f"| path | {unit} | GFLOP/s | share of its ceiling | vs open_clip fp32 | cosine to fp32 |")
        print("|---|---|---|---|---|---|")
        base = rates["open_clip fp32"]
        for path, (fn, ceiling) in paths.items():
            rate = rates[path]
            cos = "(its own weights)" if path == "open_clip fp32" else f"{cosine(outputs[path], reference):.5f}"
            print(f"| {path} | {rate:.1f} | {rate * work:.0f} | {rate * work / ceilings[ceiling]:.0%} of {ceiling} | "
                  f"{rate / base:.2f}x | {cos} |")
        fp32_rate = rates["ours torch fp32"]
        verdict = "not slower than fp32" if auto_rate >= 0.95 * fp32_rate else "SLOWER than fp32"
        print(f"\n--precision auto on PyTorch picks {picked} ({why}): {auto_rate:.1f} {unit}, "
              f"{auto_rate / fp32_rate:.2f}x torch fp32, {auto_rate / base:.2f}x open_clip fp32: {verdict}")
    for arch in ("ViT-B-32", "MobileCLIP2-S0"):
        queries(arch, tmp)


def profile_onnx(arch: str, batch: int) -> None:
    import collections
    import dataclasses
    import json

    import onnxruntime as ort

    import dualtower
    from dualtower.apps.machine import describe
    from dualtower.export import export

    print(f"machine: {describe()}; onnxruntime {ort.__version__}")
    model = dualtower.create_model(arch, seed=0).eval()
    model.text, model.cfg = None, dataclasses.replace(model.cfg, text=None)
    size = model.cfg.vision.image_size
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    tmp = scratch()
    for opset in (18, 20):
        export(model, tmp / str(opset), precision="int8", opset=opset)
        options = ort.SessionOptions()
        options.enable_profiling, options.profile_file_prefix = True, str(tmp / f"profile{opset}")
        session = ort.InferenceSession(str(tmp / str(opset) / "image.onnx"), options,
                                       providers=["CPUExecutionProvider"])
        rate = best_rate(lambda: session.run(None, {"pixels": x}), batch, 6.0)
        shares = collections.Counter()
        for event in json.loads(Path(session.end_profiling()).read_text()):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                shares[event["args"]["op_name"]] += event["dur"]
        total = sum(shares.values())
        top = ", ".join(f"{op} {t / total:.0%}" for op, t in shares.most_common(10))
        print(f"{arch} int8, opset {opset}, batch {batch}: {rate:.1f} images/s; {top}")


def queries(arch: str, tmp: Path) -> None:
    """One text query at a time, as the search service embeds it: p50 and p99 over 100 queries, each path."""
    import dualtower
    import dualtower.onnx
    from dualtower.export import export
    from dualtower.runtimes.openvino import OpenVinoModel

    model = dualtower.create_model(arch, seed=0).eval()
    for precision in ("fp32", "int8"):
        if not (tmp / f"{arch}-{precision}").exists():
            export(model, tmp / f"{arch}-{precision}", precision=precision)
    ids = dualtower.get_tokenizer(model)(["a photo of a dog on a beach"])
    bf16 = dualtower.create_model(arch, seed=0).eval().to(torch.bfloat16)
    paths = {"ours torch fp32": lambda: model.encode_text(ids), "ours torch bf16": lambda: bf16.encode_text(ids)}
    for precision in ("fp32", "int8"):
        rt = dualtower.onnx.load(tmp / f"{arch}-{precision}", spinning=False)
        paths[f"ours onnx {precision}"] = lambda rt=rt: rt.encode_text(ids.numpy())
    try:
        for hint in ("fp32", "bf16"):
            rt = OpenVinoModel(tmp / f"{arch}-fp32", precision=hint, spinning=False)
            paths[f"ours openvino {hint}"] = lambda rt=rt: rt.encode_text(ids.numpy())
        if (tmp / f"{arch}-openvino-int8").exists():  # made by the tower rows above
            rt = OpenVinoModel(tmp / f"{arch}-openvino-int8", spinning=False)
            paths["ours openvino int8"] = lambda rt=rt: rt.encode_text(ids.numpy())
    except ImportError:
        pass
    causal = "causal: cut after its end-of-text token" if model.cfg.text.causal else "no causal mask: all 77 tokens"
    print(f"\n## One text query, {arch} (batch 1, {causal}), ms\n")
    print("| path | p50 | p99 |\n|---|---|---|")
    with torch.inference_mode():
        for path, fn in paths.items():
            p50, p99 = query_latency(fn)
            print(f"| {path} | {p50:.2f} | {p99:.2f} |")

if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
