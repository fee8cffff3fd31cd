"""`dualtower index` on the same JPEG photos with `--executor local` and `--executor ray` (a local cluster of this
machine's CPUs, and a simulated two-node cluster of one CPU a node), in one run: images/s and the ratio to local.

    .venv/bin/python benchmarks/ray_index.py [--photos 384] [--arch ViT-B-32] [--shard-size 64]

Ray's start-up is measured and reported apart: starting or joining the cluster, and the actors' own start
(a new process importing torch, opening the model and checking its weights digest; the slowest actor's, as they
open together) and the driver's opening of the model, as opening the model is outside the local time; the ratio
with both included is printed too. Random weights (none can be downloaded here): speed does not depend on them.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=int, default=384)
    p.add_argument("--arch", default="ViT-B-32")
    p.add_argument("--shard-size", type=int, default=64)
    args = p.parse_args()

    import dualtower
    from dualtower import runtimes
    from dualtower.runtimes import OpenOptions
    from dualtower.search import build_index, build_index_ray
    from mobileclip import photos, scratch
    from search import machine

    tmp = scratch("ray-bench-")
    folder = photos(tmp, args.photos)
    model_dir = tmp / "model"
    dualtower.save(dualtower.create_model(args.arch, seed=0), model_dir)
    open_model = functools.partial(runtimes.open, str(model_dir), "torch", OpenOptions(precision="fp32"))
    print(f"machine: {machine()}")
    print(f"{args.photos} JPEG photos (400-800 px), {args.arch} (random weights, fp32), shards of "
          f"{args.shard_size}, batch 64\n")

    rows = []
    embedder = open_model()
    start = time.perf_counter()
    build_index(str(folder), embedder, tmp / "local", workers=2)
    local = time.perf_counter() - start
    rows.append(("local (2 decoding workers, torch on 2 threads)", local, 0.0, 0.0, 1, "model opened before"))
    del embedder

    def ray_run(name: str, **kw) -> None:
        out = tmp / name.split()[0]
        start = time.perf_counter()
        report = build_index_ray(str(folder), open_model, out, shard_size=args.shard_size, **kw)
        total = time.perf_counter() - start
        run = report.run
        opening = report.open_s + run.open_max_s  # the driver's model, then the actors'
        rows.append((name, total - run.startup_s - opening, run.startup_s, opening, run.nodes,
                     f"{run.actors} actors; decoding {run.decode_s:.1f} s, embedding {run.model_s:.1f} s summed"))

    ray_run("ray-1 node, 2 CPUs", cpus=2)
    ray_run("ray-1a node, 2 CPUs, 1 actor", cpus=2, actors=1)
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        ray_run("ray-2 nodes (simulated), 1 CPU each", address=cluster.address)
    finally:
        cluster.shutdown()

    print("| executor | nodes | seconds, start-up excluded | images/s | time / local | Ray start-up s | actors "
          "and driver opening the model s | time / local, start-up included | |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, seconds, startup, opening, nodes, note in rows:
        label = name.replace("ray-1a", "ray").replace("ray-1", "ray").replace("ray-2", "ray")
        print(f"| {label} | {nodes} | {seconds:.1f} | {args.photos / seconds:.1f} | {seconds / local:.2f} | "
              f"{startup:.1f} | {opening:.1f} | {(seconds + startup + opening) / local:.2f} | {note} |")
    print(f"\n(cpus seen by this process: {os.cpu_count()})")


if __name__ == "__main__":
    main()
