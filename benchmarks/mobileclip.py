"""MobileCLIP on a CPU, in one run: image towers (open_clip's MobileCLIP2-S0 fp32 as the baseline; ours on PyTorch
and ONNX Runtime, fp32 and int8), indexing real photos end to end with `dualtower index` (decode, preprocess,
embed, store) with MobileCLIP2-S0 and -S2 beside ViT-B-32, the share of each stage, and a text query's latency.

    .venv/bin/python benchmarks/mobileclip.py [--seconds 6] [--photos 96] [--index-only]

Random weights (none can be downloaded here): speed does not depend on them; int8's cosine to fp32 does a
little. The photos are skimage's bundled ones, re-encoded as JPEG at several sizes (real decode work).
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def scratch(prefix: str = "dualtower-bench-") -> Path:
    """A temporary folder removed when the script ends, however it ends (exports of several towers fill a disk)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


def photos(root: Path, n: int) -> Path:
    import skimage.data
    from PIL import Image

    names = [n for n in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                         "camera", "cat", "retina", "colorwheel", "logo", "page", "moon", "horse", "text")
             if hasattr(skimage.data, n)]
    folder = root / "photos"
    folder.mkdir()
    for i in range(n):
        name = names[i % len(names)]
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        side = (640, 512, 800, 400)[i % 4]
        image.thumbnail((side, side))
        image.save(folder / f"{i:04d}-{name}.jpg", quality=90)
    return folder


def rate(fn, images: int, seconds: float) -> float:
    fn()
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n * images / (time.perf_counter() - start)


def openvino_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--photos", type=int, default=96)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--index-only", action="store_true", help="only the `dualtower index` table")
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    from dualtower.apps.machine import describe

    print(f"machine: {describe()}")
    tmp = scratch()
    folder = photos(tmp, args.photos)
    if not args.index_only:
        folded = tower_table(args, tmp, folder)
        text_table(tmp, folded)
    index_table(args, tmp, folder)


def tower_table(args, tmp: Path, folder: Path):
    """The S0 image tower in each runtime beside open_clip's; returns the folded PyTorch model."""
    import open_clip

    import dualtower
    from dualtower import onnx as donnx
    from dualtower.export import export

    # Image towers, batch of real photos preprocessed as each model wants
    from PIL import Image

    rows = []
    files = sorted(folder.iterdir())[: args.batch]
    ref = open_clip.create_model("MobileCLIP2-S0").eval()
    model = dualtower.create_model("MobileCLIP2-S0", seed=0)
    transform = dualtower.images.eval_transform(model.cfg.preprocess)
    pixels = torch.stack([transform(Image.open(f)) for f in files])
    with torch.no_grad():
        base = rate(lambda: ref.encode_image(pixels), len(files), args.seconds)
        folded = dualtower.create_model("MobileCLIP2-S0", seed=0).reparameterize()
        fp32_out = folded.encode_image(pixels).numpy()
        rows.append(("open_clip MobileCLIP2-S0, PyTorch fp32", base, 1.0))
        unfolded = rate(lambda: model.encode_image(pixels), len(files), args.seconds)
        rows.append(("ours, PyTorch fp32, unfolded", unfolded, 1.0))
        rows.append(("ours, PyTorch fp32, folded", rate(lambda: folded.encode_image(pixels), len(files),
                                                        args.seconds), 1.0))
    for precision in ("fp32", "int8"):
        export(model, tmp / f"s0-{precision}", precision=precision)
        rt = donnx.load(tmp / f"s0-{precision}")
        x = pixels.numpy()
        out = rt.encode_image(x)
        rows.append((f"ours, ONNX Runtime {precision} (folded)", rate(lambda: rt.encode_image(x), len(files),
                                                                      args.seconds), cosine(out, fp32_out)))
    print(f"\n## MobileCLIP2-S0 image tower, batch {len(files)} photos at 256 px\n")
    print("| tower | images/s | vs open_clip fp32 | cosine to fp32 |\n|---|---|---|---|")
    for name, ips, cos in rows:
        print(f"| {name} | {ips:.1f} | {ips / base:.2f}x | {cos:.5f} |")
    return folded


def text_table(tmp: Path, folded) -> None:
    """A text query's latency (one text, as the search service embeds it)."""
    import dualtower
    from dualtower import onnx as donnx

    rt = donnx.load(tmp / "s0-fp32")
    rt8 = donnx.load(tmp / "s0-int8")
    embedder = dualtower.runtimes.as_embedder(folded)
    print("\n## A text query's embedding, MobileCLIP2-S0 (one text)\n")
    print("| runtime | p50 ms | p99 ms |\n|---|---|---|")
    paths = [("PyTorch fp32", lambda: embedder.embed_texts(["a photo of a dog on a beach"])),
             ("ONNX Runtime fp32", lambda: rt.embed_texts(["a photo of a dog on a beach"])),
             ("ONNX Runtime int8", lambda: rt8.embed_texts(["a photo of a dog on a beach"]))]
    if openvino_installed():
        from dualtower.runtimes.openvino import OpenVinoModel

        ov_bf16 = OpenVinoModel(tmp / "s0-fp32", precision="bf16", spinning=False)
        paths.append(("OpenVINO bf16", lambda: ov_bf16.embed_texts(["a photo of a dog on a beach"])))
    for name, fn in paths:
        fn()
        times = []
        for _ in range(200):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1000)
        times.sort()
        print(f"| {name} | {statistics.median(times):.2f} | {times[int(0.99 * len(times)) - 1]:.2f} |")


def index_table(args, tmp: Path, folder: Path) -> None:
    """`dualtower index` end to end per model and runtime, and the share of each stage. Each is warmed first by an
    index of 16 of the photos (first calls, loader start-up), so no row pays for starting the process."""
    from dualtower.search import build_index

    print(f"\n## `dualtower index` of {args.photos} JPEG photos (400-800 px), end to end\n")
    print("| model | runtime | images/s | vs ViT-B-32 fp32 | decode | preprocess | model | a record, ms |")
    print("|---|---|---|---|---|---|---|---|")
    configs = [("ViT-B-32", "torch", "fp32"), ("MobileCLIP2-S0", "torch", "fp32"), ("MobileCLIP2-S0", "onnx", "fp32"),
               ("MobileCLIP2-S0", "onnx", "int8"), ("MobileCLIP2-S2", "torch", "fp32"),
               ("MobileCLIP2-S2", "onnx", "fp32"), ("MobileCLIP2-S2", "onnx", "int8")]
    if openvino_installed():  # bf16 from the fp32 export where the processor has bf16 units; its own int8 (NNCF)
        configs += [(name, "openvino", precision) for name in ("MobileCLIP2-S0", "MobileCLIP2-S2")
                    for precision in ("bf16", "int8")]
    warm = tmp / "warm"
    warm.mkdir()
    for f in sorted(folder.iterdir())[:16]:
        (warm / f.name).symlink_to(f)
    vit = None
    for name, runtime, precision in configs:
        emb = embedder(name, runtime, precision, tmp)
        build_index(str(warm), emb, tmp / f"warm-{name}-{runtime}-{precision}", workers=2, batch_size=32)
        start = time.perf_counter()
        build_index(str(folder), emb, tmp / f"index-{name}-{runtime}-{precision}", workers=2, batch_size=32)
        ips = args.photos / (time.perf_counter() - start)
        vit = vit or ips
        shares = " | ".join(f"{share:.0%}" for share in stage_shares(emb, folder))
        print(f"| {name} | {runtime} {precision} | {ips:.1f} | {ips / vit:.2f}x | {shares} | "
              f"{record_ms(emb, folder):.2f} |")


def record_ms(emb, folder: Path) -> float:
    """Milliseconds of one thread per index record (`search.records.Records`: the file's hash, decode, thumbnail
    and its JPEG, perceptual hashes, the model's preprocess), best of 3 passes over the folder."""
    from dualtower.data.files import ImageFolder
    from dualtower.search.records import Records

    source = ImageFolder(str(folder), captions=False)
    records = Records(source, [(i, *source.origin(i), None, None) for i in range(len(source))], emb.transform)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for k in range(len(records)):
            records[k]
        best = min(best, time.perf_counter() - start)
    return best / len(records) * 1000


def embedder(name: str, runtime: str, precision: str, tmp: Path):
    """`name` (random weights, seed 0) on `runtime` at `precision`; exports written under `tmp` as needed."""
    import dualtower
    from dualtower import onnx as donnx
    from dualtower.export import export

    m = dualtower.create_model(name, seed=0)
    if runtime == "onnx":
        export(m, tmp / f"{name}-{precision}", precision=precision)
        return donnx.load(tmp / f"{name}-{precision}")
    if runtime == "openvino":
        from dualtower.runtimes.openvino import OpenVinoModel

        if precision == "int8":
            export(m, tmp / f"{name}-openvino-int8", format="openvino", precision="int8")
            return OpenVinoModel(tmp / f"{name}-openvino-int8")
        if not (tmp / f"{name}-fp32").exists():
            export(m, tmp / f"{name}-fp32")
        return OpenVinoModel(tmp / f"{name}-fp32", precision=precision)
    if name != "ViT-B-32":
        m.reparameterize()
    return dualtower.runtimes.as_embedder(m)


def stage_shares(emb, folder: Path) -> tuple[float, float, float]:
    """Each stage alone on the same files, as a share of their sum: decode (Pillow, full), preprocess (resize, crop,
    normalise), model."""
    from PIL import Image

    t = time.perf_counter()
    decoded = [Image.open(f).convert("RGB") for f in sorted(folder.iterdir())]
    decode = time.perf_counter() - t
    t = time.perf_counter()
    batch = emb.collate([emb.transform(im) for im in decoded])
    prep = time.perf_counter() - t
    t = time.perf_counter()
    emb.embed_pixels(batch)
    model_s = time.perf_counter() - t
    total = decode + prep + model_s
    return decode / total, prep / total, model_s / total


if __name__ == "__main__":
    main()
