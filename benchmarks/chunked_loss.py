"""Memory and time of the chunked contrastive losses against the plain ones, on the CPU.

Each measurement runs in its own process, so its peak resident memory (ru_maxrss) is its own. Loss forward +
backward w.r.t. both embedding sets and the scale, fp32, D = 512, one process:

    .venv/bin/python benchmarks/chunked_loss.py [--big 65536] [--small 8192] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from isolated import peak_rss_gb, run_isolated


def measure(kind: str, impl: str, b: int, d: int, repeats: int, chunk: int) -> dict:
    import torch
    import torch.nn.functional as F

    from dualtower.chunked_losses import chunked_clip_loss, chunked_siglip_loss
    from dualtower.losses import clip_loss, siglip_loss

    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(b, d, generator=g), dim=-1).requires_grad_()
    txt = F.normalize(torch.randn(b, d, generator=g), dim=-1).requires_grad_()
    scale, bias = torch.tensor(14.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)
    fns = {("clip", "plain"): lambda: clip_loss(img, txt, scale),
           ("clip", "chunked"): lambda: chunked_clip_loss(img, txt, scale, chunk=chunk),
           ("siglip", "plain"): lambda: siglip_loss(img, txt, scale, bias),
           ("siglip", "chunked"): lambda: chunked_siglip_loss(img, txt, scale, bias, chunk=chunk)}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fns[(kind, impl)]().backward()
        times.append(time.perf_counter() - start)
        img.grad = txt.grad = scale.grad = bias.grad = None
    return {"seconds": statistics.median(times),
            "peak_rss_gb": peak_rss_gb()}


def run(kind, impl, b, d, repeats, chunk) -> dict:
    return run_isolated(__file__, kind, impl, b, d, repeats, chunk)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--big", type=int, default=65536)
    parser.add_argument("--small", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--one", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        kind, impl, b, d, repeats, chunk = args.one
        print(json.dumps(measure(kind, impl, int(b), int(d), int(repeats), int(chunk))))
        return
    from dualtower.apps.machine import describe

    print(f"machine: {describe()}; "
          f"fp32, D={args.dim}, chunk {args.chunk}, forward+backward, median of {args.repeats}")
    print(f"{'loss':<7} {'B':>6} {'plain s':>9} {'chunked s':>10} {'time ratio':>10} {'plain GB':>9} {'chunked GB':>10}")
    for kind in ("clip", "siglip"):
        p, c = (run(kind, impl, args.small, args.dim, args.repeats, args.chunk) for impl in ("plain", "chunked"))
        print(f"{kind:<7} {args.small:>6} {p['seconds']:>9.2f} {c['seconds']:>10.2f} "
              f"{c['seconds'] / p['seconds']:>9.2f}x {p['peak_rss_gb']:>9.2f} {c['peak_rss_gb']:>10.2f}")
    need = 2 * args.big ** 2 * 4 / 2**30  # the logits and their gradient, fp32, before any temporaries
    for kind in ("clip", "siglip"):
        c = run(kind, "chunked", args.big, args.dim, 1, args.chunk)
        print(f"{kind:<7} {args.big:>6} {'(not run)':>9} {c['seconds']:>10.1f} {'':>10} {f'>{need:.0f}':>9} "
              f"{c['peak_rss_gb']:>10.2f}")
    print(f"plain at B={args.big} is not run: its logits and their gradient alone take {need:.0f} GB")


if __name__ == "__main__":
    main()
