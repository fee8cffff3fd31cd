"""Search: what indexing costs over embedding, how the automatic engine recalls and answers at a million vectors,
and the service under a bounded load on loopback. Each part prints the machine it ran on.

    .venv/bin/python benchmarks/search.py build [--images 256] [--arch ViT-B-32]
        `dualtower index` of a folder of real JPEGs (embed_folder.py's) against `dualtower embed`'s loop over
        the same folder, images/s, same model; then the same index run again (nothing changed).
    .venv/bin/python benchmarks/search.py ann [--n 1000000] [--dim 512] [--queries 500]
        clustered float16 vectors (a mixture of 2,000 Gaussians on the sphere; queries near stored vectors but
        not at them, as text queries are): recall@10 of the automatic engine (IVF-PQ with exact re-rank) against
        exact search, query latency p50/p99 for both, build time and resident memory.
    .venv/bin/python benchmarks/search.py load [--n 100000] [--rate 20] [--seconds 30] [--arch ViT-B-32]
                                               [--runtime torch|onnx] [--precision fp32|bf16|int8]
                                               [--engine auto|flat|ivf] [--filters]
        `dualtower serve` (a subprocess, 127.0.0.1) over an index of n vectors, text queries at a fixed rate
        from a thread pool; latency p50/p99, queries/s sustained and errors. The text tower is a random-weight
        `--arch` (the cost of a real one); the vectors are clustered like those of `ann`. --filters: each record
        has a field `bucket` (its number mod 100), and the load runs again with filters keeping 1%, 10% and 90% of
        the index: the same filter on every query (the service keeps its rows), and a filter new to every query
        (the rows found again each time), with p99 ratios to the unfiltered run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def machine() -> str:
    from dualtower.apps.machine import describe

    return describe()


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float16)
    for lo in range(0, n, 100_000):
        m = min(100_000, n - lo)
        x = centres[rng.integers(0, clusters, m)] + 0.6 * rng.normal(size=(m, dim)).astype(np.float32)
        out[lo: lo + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def near(vectors: np.ndarray, count: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = vectors[rng.integers(0, len(vectors), count)].astype(np.float32)
    q += rng.normal(size=q.shape).astype(np.float32) / np.sqrt(q.shape[1])  # noise as long as the vector
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def fill_store(path: Path, vectors: np.ndarray, identity: dict, engine: str = "auto") -> str:
    """An index of synthetic vectors (records named vec-N, no thumbnails), written through the Store, with its
    engine built and saved; returns the engine's kind."""
    from dualtower.search import Store
    from dualtower.search.engines import ready

    store = Store.create(path, identity, vectors.shape[1])
    for lo in range(0, len(vectors), 50_000):
        part = vectors[lo: lo + 50_000]
        store.append(part, [{"key": f"vec-{lo + i}", "path": None, "size": None, "mtime_ns": None, "sha256": None,
                             "width": 0, "height": 0, "caption": None, "thumb": None,
                             "fields": {"bucket": (lo + i) % 100}} for i in range(len(part))])
    kind = ready(store, engine, save=True).kind
    store.close()
    return kind


def bench_build(args) -> None:
    import torch

    import dualtower
    from dualtower.data import open_source
    from dualtower.eval import embed_source
    from dualtower.search import build_index
    from embed_folder import make_folder

    root = Path(tempfile.gettempdir()) / "dualtower-bench-photos"
    make_folder(root, args.images)
    torch.manual_seed(0)
    model = dualtower.create_model(args.arch).eval()
    print(f"machine: {machine()}\n{args.images} JPEGs, {args.arch} (random weights), batch 64, 2 loader workers")
    embed_source(model, open_source(str(root), captions=False), workers=2)  # warm-up
    t = time.perf_counter()
    images, _ = embed_source(model, open_source(str(root), captions=False), workers=2)
    embed_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        report = build_index(str(root), model, Path(out) / "index", workers=2)
        index_s = time.perf_counter() - t
        t = time.perf_counter()
        again = build_index(str(root), model, Path(out) / "index", workers=2)
        again_s = time.perf_counter() - t
    n = len(images.ids)
    print(f"dualtower embed : {n / embed_s:7.1f} images/s ({embed_s:.1f} s)")
    print(f"dualtower index : {report.items / index_s:7.1f} images/s ({index_s:.1f} s; hashing, thumbnails, "
          f"SQLite and FAISS included)  ratio index/embed {embed_s / index_s:.2f}x")
    print(f"index again, nothing changed: {again_s:.2f} s for {again.unchanged} unchanged images")


def bench_ann(args) -> None:
    from dualtower.search.engines.faiss_index import Engine

    print(f"machine: {machine()}")
    t = time.perf_counter()
    vectors = clustered(args.n, args.dim)
    queries = near(vectors, args.queries)
    print(f"{args.n:,} vectors x {args.dim} (float16, {vectors.nbytes / 2**30:.2f} GiB), {args.queries} queries; "
          f"generated in {time.perf_counter() - t:.0f} s")
    rows = np.arange(args.n)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "vectors.f16"
        vectors.tofile(path)
        del vectors
        mapped = np.memmap(path, dtype=np.float16, mode="r", shape=(args.n, args.dim))
        import faiss

        t = time.perf_counter()
        ivf = Engine.build("auto", rows, mapped)
        build_s = time.perf_counter() - t
        size = faiss.serialize_index(ivf.index).nbytes / 2**20
        print(f"auto engine: {ivf.kind}, built in {build_s:.0f} s; its index in memory {size:.0f} MB (codes, lists "
              f"and centroids); the float16 vectors for the re-rank stay on disk, mapped "
              f"({args.n * args.dim * 2 / 2**20:.0f} MB), only candidates' pages are read")
        t = time.perf_counter()
        flat = Engine.build("flat", rows, mapped)
        print(f"exact engine: built in {time.perf_counter() - t:.0f} s ({args.n * args.dim * 4 / 2**30:.1f} GiB "
              "of float32)")
        exact, approx = [], []
        lat = {"flat": [], "ivf": []}
        for q in queries:
            for name, engine, out in (("flat", flat, exact), ("ivf", ivf, approx)):
                t = time.perf_counter()
                _, r = engine.search(q[None], 10)
                lat[name].append((time.perf_counter() - t) * 1000)
                out.append(r[0])
        recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
        for name in ("flat", "ivf"):
            s = sorted(lat[name])
            print(f"  {name:4s}: p50 {statistics.median(s):7.2f} ms   p99 {s[int(0.99 * (len(s) - 1))]:7.2f} ms")
        print(f"recall@10 of {ivf.kind} against exact: {recall:.4f}  (nprobe {ivf.nprobe}, "
              f"{max(10 * ivf.rerank, ivf.min_candidates)} candidates re-ranked)")
        ivf.min_candidates, ivf.rerank = 100, 10
        approx = [ivf.search(q[None], 10)[1][0] for q in queries]
        print(f"  the same with 100 candidates: recall@10 "
              f"{np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)]):.4f}")
        speedup = statistics.median(lat["flat"]) / statistics.median(lat["ivf"])
        print(f"exact / {ivf.kind} median latency: {speedup:.1f}x")


def bench_load(args) -> None:
    import torch

    import dualtower
    from dualtower.search import model_identity

    print(f"machine: {machine()}")
    torch.manual_seed(0)
    model = dualtower.create_model(args.arch)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        dualtower.save(model, d / "model")
        identity = model_identity(model, str(d / "model"))
        t = time.perf_counter()
        kind = fill_store(d / "index", clustered(args.n, model.cfg.embed_dim), identity, args.engine)
        print(f"index of {args.n:,} vectors ({kind}) written in {time.perf_counter() - t:.0f} s")
        port = 8000 + os.getpid() % 1000
        command = [sys.executable, "-m", "dualtower", "serve", str(d / "index"), "--port", str(port)]
        if args.runtime == "onnx":
            from dualtower.export import export

            export(model, d / "onnx", precision=args.precision)
            command += ["--runtime", "onnx", "--model", str(d / "onnx")]
        else:
            command += ["--precision", args.precision]
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env={**os.environ, **dict(e.split("=", 1) for e in args.server_env)})
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(url + "/healthz", timeout=2).read()
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("the server did not start")
                    time.sleep(0.5)
            words = ["red", "car", "dog", "beach", "city", "night", "mountain", "a photo of", "old", "small"]
            rng = np.random.default_rng(0)
            texts = [" ".join(rng.choice(words, size=rng.integers(2, 7))) for _ in range(args.rate * args.seconds)]
            for text in texts[:10]:  # warm-up
                _post(url, text)
            print(f"{len(texts)} text queries at {args.rate}/s over {args.seconds} s to {args.arch}'s text tower "
                  f"({args.runtime}, {args.precision}) and {args.n:,} vectors (k=10):")
            base = _load(url, texts, args.rate, lambda i: [], "no filter")
            if args.filters:
                for share, condition in (("1%", "bucket<1"), ("10%", "bucket<10"), ("90%", "bucket<90")):
                    for how, where in (("the same filter", lambda i, c=condition: [c]),
                                       ("a new filter each", lambda i, c=condition: [c, f"width!=-{i + 1}"])):
                        p99 = _load(url, texts, args.rate, where, f"{share} of the index, {how}")
                        print(f"    p99 / unfiltered p99: {p99 / base:.2f}x")
        finally:
            server.terminate()
            server.wait()


def _load(url: str, texts: list[str], rate: int, where, label: str) -> float:
    """The texts sent at `rate` per second on a fixed schedule (query i with filter `where(i)`); prints and
    returns the latency p99 in ms."""
    latencies, errors, lock = [], [], threading.Lock()

    def one(i, text):
        t = time.perf_counter()
        try:
            status = _post(url, text, where(i))
        except OSError as e:
            status = str(e)
        with lock:
            (latencies if status == 200 else errors).append((time.perf_counter() - t) * 1000)

    threads = []
    start = time.perf_counter()
    for i, text in enumerate(texts):  # a fixed schedule: request i goes at i / rate seconds
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        th = threading.Thread(target=one, args=(i, text))
        th.start()
        threads.append(th)
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - start
    s = sorted(latencies) or [float("nan")]
    p99 = s[int(0.99 * (len(s) - 1))]
    print(f"  {label}: sustained {len(latencies) / elapsed:.1f} queries/s, errors {len(errors)}; latency p50 "
          f"{statistics.median(s):.1f} ms   p99 {p99:.1f} ms   max {s[-1]:.1f} ms")
    return p99


def _post(url: str, text: str, where: list | None = None) -> int:
    body = {"text": text, "k": 10, **({"where": where} if where else {})}
    req = urllib.request.Request(url + "/search", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()
        return r.status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("build")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--arch", default="ViT-B-32")
    p = sub.add_parser("ann")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=500)
    p = sub.add_parser("load")
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--rate", type=int, default=20)
    p.add_argument("--seconds", type=int, default=30)
    p.add_argument("--arch", default="ViT-B-32")
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="onnx: the model exported (at --precision) and served with --runtime onnx")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16", "int8"], default="fp32",
                   help="torch: fp32 or bf16; onnx: fp32, fp16 or int8")
    p.add_argument("--engine", choices=["auto", "flat", "ivf"], default="auto")
    p.add_argument("--server-env", nargs="*", default=[], help="NAME=VALUE pairs for the server's environment")
    p.add_argument("--filters", action="store_true", help="also with filters keeping 1%%, 10%% and 90%% of the index")
    args = parser.parse_args()
    {"build": bench_build, "ann": bench_ann, "load": bench_load}[args.part](args)


if __name__ == "__main__":
    main()
