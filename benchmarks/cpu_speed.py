"""CPU speed against open_clip (and HF where it has the same model), same random weights, same outputs.

Measures, alternating the implementations in one process (warm-up, then the median of several repetitions):
- the tokenizer on 10,000 distinct English sentences (the installed packages' descriptions and docstrings), and
  on 10,000 drawn with repeats from the descriptions alone (more non-ASCII text); ids checked identical;
- the text tower (ViT-B-32) on those sentences, batch 256, outputs checked within 1e-5 relative;
- the image tower (ViT-B-32 and ViT-B-16), batch 32 at 224 px: fp32 against open_clip and HF transformers
  (outputs checked within 1e-5 relative), and with the weights in bf16 against open_clip fp32 (cosine
  similarity to the fp32 embeddings reported), also through torch.compile with Inductor's freezing (the first
  call, which compiles, timed apart);
- the fp32 and bf16 matrix-multiply ceiling of this machine, and the GFLOP/s each image tower reaches.

    .venv/bin/python benchmarks/cpu_speed.py [--repeats 5] [--archs ViT-B-32,ViT-B-16] [--tokenizer-only]
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
    """n sentences drawn with repeats from the installed packages' descriptions (about 840 distinct, 3% of
    them with non-ASCII characters)."""
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


def distinct_sentences(n: int) -> list[str]:
    """n different sentences of 5-25 words: the descriptions above, then the docstrings of Python's standard
    library and of the installed packages, as many as needed."""
    found = dict.fromkeys(sentences(20_000))
    docstring = re.compile(r'"""(.*?)"""', re.S)
    roots = [os.path.join(sys.base_prefix, "lib", "python3*"), os.path.join(sys.prefix, "lib", "python3*",
                                                                            "site-packages")]
    for root in roots:
        for path in sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True)):
            if len(found) >= 2 * n:
                break
            if ("site-packages" in path and root == roots[0]) or os.sep + "test" in path:
                continue
            for doc in docstring.findall(open(path, encoding="utf-8", errors="replace").read()):
                for s in re.split(r"(?<=[.!?])\s+", doc):
                    s = " ".join(s.split())
                    if (5 <= len(s.split()) <= 25 and s[0].isupper()
                            and not re.search(r"[<>{}\[\]`|#=_()*:]|http|\.\.", s)):
                        found[s] = None
    if len(found) < n:
        raise RuntimeError(f"only {len(found)} distinct sentences found, {n} wanted")
    return random.Random(0).sample(list(found), n)


def tokenizer_rows(repeats: int) -> list[tuple]:
    import open_clip

    import dualtower

    rows = []
    for name, texts in (("10k distinct sentences", distinct_sentences(10_000)),
                        ("10k sentences drawn from ~840", sentences(10_000))):
        share = sum(not t.isascii() for t in texts) / len(texts)
        ref_tok, our_tok = open_clip.tokenizer.SimpleTokenizer(), dualtower.tokenizers.ClipTokenizer()
        assert torch.equal(ref_tok(texts), our_tok(texts)), "tokenizer ids differ"
        label = f"tokenizer, {name} ({share:.1%} non-ASCII)"
        t_ref = timed(lambda: open_clip.tokenizer.SimpleTokenizer()(texts), 1)  # fresh: no warm word cache
        t_ours = timed(lambda: dualtower.tokenizers.ClipTokenizer()(texts), 1)
        rows.append((f"{label}, fresh", len(texts) / t_ref, len(texts) / t_ours, "texts/s"))
        t_ref, t_ours = timed(lambda: ref_tok(texts), repeats), timed(lambda: our_tok(texts), repeats)
        rows.append((f"{label}, warm", len(texts) / t_ref, len(texts) / t_ours, "texts/s"))
    return rows


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def gemm_ceiling(dtype: torch.dtype, repeats: int) -> float:
    """GFLOP/s of one large matrix multiply (ViT-B's MLP shape at batch 32 x 50 tokens)."""
    a, b = torch.randn(1600, 768, dtype=dtype), torch.randn(768, 3072, dtype=dtype)
    a @ b
    return 2 * 1600 * 768 * 3072 / timed(lambda: a @ b, repeats) / 1e9


def image_gflop(model, pixels) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.encode_image(pixels)
    return counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--archs", default="ViT-B-32,ViT-B-16")
    parser.add_argument("--tokenizer-only", action="store_true")
    args = parser.parse_args()
    import open_clip

    import dualtower
    from dualtower.eval.embed import embed_texts
    from dualtower.apps.machine import describe

    print(f"machine: {describe()}; median of {args.repeats}")
    rows = []

    rows += tokenizer_rows(args.repeats)
    if args.tokenizer_only:
        return print_rows(rows)
    texts = sentences(10_000)
    our_tok = dualtower.get_tokenizer("ViT-B-32")

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

    os.remove(path)
    for dtype in (torch.float32, torch.bfloat16):
        rows.append((f"matmul ceiling {str(dtype)[6:]} (1600x768 @ 768x3072)", None, gemm_ceiling(dtype, args.repeats),
                     "GFLOP/s"))
    for arch in args.archs.split(","):
        rows += image_rows(arch, args.repeats)
    print_rows(rows)


def print_rows(rows: list[tuple]) -> None:
    width = max(56, *(len(r[0]) for r in rows))
    print(f"{'what':<{width}} {'peer':>10} {'dualtower':>10} {'ratio':>7}")
    for name, r, o, unit in rows:
        if r is None:
            print(f"{name:<{width}} {'':>10} {o:>10.1f} {'':>7}  {unit}")
        else:
            print(f"{name:<{width}} {r:>10.1f} {o:>10.1f} {o / r:>6.2f}x  {unit}")


def image_rows(arch: str, repeats: int) -> list[tuple]:
    """open_clip fp32, HF fp32 and ours fp32 / bf16 weights on one set of random weights, alternated."""
    import copy

    import open_clip
    import transformers

    import dualtower
    from dualtower import convert

    torch.manual_seed(0)
    ref = open_clip.create_model(arch).eval()
    path = f"/tmp/dualtower-bench-{arch}.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
    ours = dualtower.load(path, arch=arch).eval()
    os.remove(path)
    hf_dir = f"/tmp/dualtower-bench-{arch}-hf"
    convert.export(ours, hf_dir, "hf")
    hf = transformers.CLIPModel.from_pretrained(hf_dir).eval()
    bf16 = copy.deepcopy(ours).to(torch.bfloat16)
    import torch._inductor.config as inductor_config

    compiled = torch.compile(bf16.visual)  # Inductor with freezing: weights folded in, oneDNN-prepacked on CPU

    pixels = torch.randn(32, 3, 224, 224)
    with torch.inference_mode():
        a, b = ref.encode_image(pixels), ours.encode_image(pixels)
        h = hf.get_image_features(pixel_values=pixels)
        h = h if isinstance(h, torch.Tensor) else h.pooler_output
        c = bf16.encode_image(pixels).float()
        start = time.perf_counter()
        with inductor_config.patch(freezing=True):
            d = compiled(pixels).float()
        first_call = time.perf_counter() - start
        print(f"{arch} image embeddings fp32: max relative difference {rel(b, a):.2e} (HF {rel(h, a):.2e}); "
              f"bf16 weights: min cosine similarity to fp32 "
              f"{float(torch.nn.functional.cosine_similarity(c, a, dim=-1).min()):.5f}; compiled: "
              f"{float(torch.nn.functional.cosine_similarity(d, a, dim=-1).min()):.5f}, first call {first_call:.1f} s")
        times = {name: [] for name in ("open_clip", "hf", "ours", "bf16", "compiled")}
        calls = {"open_clip": lambda: ref.encode_image(pixels), "hf": lambda: hf.get_image_features(pixel_values=pixels),
                 "ours": lambda: ours.encode_image(pixels), "bf16": lambda: bf16.encode_image(pixels),
                 "compiled": lambda: compiled(pixels)}
        for fn in calls.values():
            fn()
        for _ in range(repeats):  # alternate, so drifts in the machine's speed hit all four alike
            for name, fn in calls.items():
                times[name].append(timed(fn, 1))
    t = {name: statistics.median(v) for name, v in times.items()}
    gflop = image_gflop(ours, pixels)
    import shutil

    shutil.rmtree(hf_dir)
    return [
        (f"image tower {arch} fp32 vs open_clip, batch 32", 32 / t["open_clip"], 32 / t["ours"], "images/s"),
        (f"image tower {arch} fp32 vs HF transformers", 32 / t["hf"], 32 / t["ours"], "images/s"),
        (f"image tower {arch} bf16 weights vs open_clip fp32", 32 / t["open_clip"], 32 / t["bf16"], "images/s"),
        (f"image tower {arch} bf16 + torch.compile (freezing)", 32 / t["open_clip"], 32 / t["compiled"], "images/s"),
        (f"image tower {arch} fp32 arithmetic rate", gflop / t["open_clip"], gflop / t["ours"], "GFLOP/s"),
    ]


if __name__ == "__main__":
    main()
