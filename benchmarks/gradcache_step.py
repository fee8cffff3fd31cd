"""Peak memory and time per sample of a gradient-cache training step against plain steps, on the CPU.

Each measurement runs in its own process (peak resident memory, ru_maxrss, is per process). A step is forward,
loss, backward and an AdamW update of a `small-digits` model (ViT 32 px, 16 patches) on random pixels and real
captions, with dropout 0.1 and patch dropout 0.5:

    .venv/bin/python benchmarks/gradcache_step.py [--batch 4096] [--micro 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

from isolated import peak_rss_gb, run_isolated


def measure(batch: int, micro: int, repeats: int) -> dict:
    import torch

    import dualtower
    from dualtower.chunked_losses import chunked_clip_loss
    from dualtower.losses import clip_loss
    from dualtower.train.gradcache import encode, grad_cache_step

    model = dualtower.create_model("small-digits", seed=0).train()
    model.set_dropout(0.1)
    model.visual.set_patch_dropout(0.5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, 3, 32, 32, generator=g)
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    ids = dualtower.get_tokenizer(model)([f"a photo of the digit {words[i % 10]}, number {i}" for i in range(batch)])
    keys = torch.arange(batch, dtype=torch.int64)
    nothing = contextlib.nullcontext()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        if micro:
            grad_cache_step(model, pixels, ids, keys, micro,
                            lambda i, t, ai, at, o: chunked_clip_loss(i, t, model.scale(), ai, at, o, chunk=1024),
                            gather=False)
        else:
            image, text = encode(model, pixels, ids, keys, nothing)
            clip_loss(image, text, model.scale()).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return {"ms_per_sample": 1000 * statistics.median(times) / batch,
            "peak_rss_gb": peak_rss_gb()}


def run(batch: int, micro: int, repeats: int) -> dict:
    return run_isolated(__file__, batch, micro, repeats)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--micro", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one)))
        return
    from dualtower.apps.machine import describe

    print(f"machine: {describe()}; "
          f"small-digits, fp32, dropout 0.1, patch dropout 0.5, median of {args.repeats} steps")
    rows = [(f"plain, batch {args.micro}", run(args.micro, 0, args.repeats)),
            (f"gradient cache, batch {args.batch} in {args.micro}s", run(args.batch, args.micro, args.repeats)),
            (f"plain, batch {args.batch}", run(args.batch, 0, args.repeats))]
    cache_gb = 2 * args.batch * 128 * 4 * 2 / 2**30  # embeddings and their gradients, fp32, E=128
    base = rows[0][1]["ms_per_sample"]
    print(f"{'step':<40} {'peak GB':>8} {'ms/sample':>10} {'vs plain ' + str(args.micro):>13}")
    for name, r in rows:
        print(f"{name:<40} {r['peak_rss_gb']:>8.2f} {r['ms_per_sample']:>10.3f} {r['ms_per_sample'] / base:>12.2f}x")
    print(f"cached embeddings and their gradients at batch {args.batch}: {cache_gb * 1024:.1f} MB")


if __name__ == "__main__":
    main()
