"""CPU speed against open_clip (and HF where it has the same model), same random weights, same outputs.

Measures, alternating the implementations in one process (warm-up, then the median of several repetitions):
- the tokenizer on 10,000 English sentences (from the installed packages' descriptions), ids checked identical;
- the text tower (ViT-B-32) on those sentences, batch 256, outputs checked within 1e-5 relative;
- the image tower (ViT-B-32), batch 32 at 224 px, fp32, outputs checked within 1e-5 relative; and with bf16
  autocast (cosine similarity to the fp32 embeddings reported).

    .venv/bin/python benchmarks/cpu_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import re
import statistics
import sys
import time
import warnings

import torch

warnings.filterwarnings("ignore")


def sentences(n: int) -> list[str]:
    found = []
    for path in sorted(glob.glob(os.path.join(sys.prefix, "lib", "python3*", "site-packages", "*.dist-info",
                                              "METADATA"))):
        body = open(path, encoding="utf-8", errors="replace").read().split("\n\n", 1)[-1]
        for s in re.split(r"(?<=[.!?])\s+", body):
            s = " ".join(s.split())
            if 5 <= len(s.split()) <= 25 and not re.search(r"[<>{}\[\]`|#=]|http", s):
                found.append(s)
    rng = random.Random(0)
    return [rng.choice(found) for _ in range(n)]


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import open_clip

    import dualtower
    from dualtower.eval.embed import embed_texts
    from dualtower.machine import describe

    print(f"machine: {describe()}; median of {args.repeats}")
    rows = []

    texts = sentences(10_000)
    ref_tok, our_tok = open_clip.tokenizer.SimpleTokenizer(), dualtower.get_tokenizer("ViT-B-32")
    assert torch.equal(ref_tok(texts[:2000]), our_tok(texts[:2000])), "tokenizer ids differ"
    t_ref = timed(lambda: open_clip.tokenizer.SimpleTokenizer()(texts), 1)  # a fresh one: no warm word cache
    t_ours = timed(lambda: dualtower.tokenizer.ClipTokenizer()(texts), 1)
    rows.append(("tokenizer, 10k sentences, fresh", len(texts) / t_ref, len(texts) / t_ours, "texts/s"))
    t_ref, t_ours = timed(lambda: ref_tok(texts), args.repeats), timed(lambda: our_tok(texts), args.repeats)
    rows.append(("tokenizer, 10k sentences, warm", len(texts) / t_ref, len(texts) / t_ours, "texts/s"))

    torch.manual_seed(0)
    ref = open_clip.create_model("ViT-B-32").eval()
    path = "/tmp/dualtower-bench-vitb32.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
    ours = dualtower.load(path, arch="ViT-B-32")

    batch = texts[:1024]
    ids = our_tok(batch)
    with torch.inference_mode():
        a = torch.nn.functional.normalize(torch.cat([ref.encode_text(ids[i:i + 256]) for i in range(0, 1024, 256)]),
                                          dim=-1)
        b = embed_texts(ours, batch, batch_size=256)
        print(f"text embeddings: max relative difference {rel(b, a):.2e}")
        t_ref = timed(lambda: [ref.encode_text(ids[i:i + 256]) for i in range(0, 1024, 256)], args.repeats)
        t_ours = timed(lambda: embed_texts(ours, batch, batch_size=256), args.repeats)
    rows.append(("text tower ViT-B-32, batch 256", 1024 / t_ref, 1024 / t_ours, "texts/s"))

    pixels = torch.randn(32, 3, 224, 224)
    with torch.inference_mode():
        a, b = ref.encode_image(pixels), ours.encode_image(pixels)
        print(f"image embeddings fp32: max relative difference {rel(b, a):.2e}")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            c = ours.encode_image(pixels).float()
        cos = torch.nn.functional.cosine_similarity(c, a, dim=-1).min()
        print(f"image embeddings bf16: min cosine similarity to fp32 {float(cos):.5f}")
        t_ref = timed(lambda: ref.encode_image(pixels), args.repeats)
        t_ours = timed(lambda: ours.encode_image(pixels), args.repeats)

        def bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                ours.encode_image(pixels)

        t_bf16 = timed(bf16, args.repeats)
    rows.append(("image tower ViT-B-32 fp32, batch 32", 32 / t_ref, 32 / t_ours, "images/s"))
    rows.append(("image tower ViT-B-32 bf16 vs open_clip fp32", 32 / t_ref, 32 / t_bf16, "images/s"))
    os.remove(path)

    print(f"{'what':<46} {'open_clip':>10} {'dualtower':>10} {'ratio':>7}")
    for name, r, o, unit in rows:
        print(f"{name:<46} {r:>10.1f} {o:>10.1f} {o / r:>6.2f}x  {unit}")


if __name__ == "__main__":
    main()
