"""The NaFlex tower (SigLIP 2) against transformers' Siglip2Model on the same random weights and the same inputs:
real photos of mixed aspect ratios through transformers' Siglip2 image processor, in fp32 and bf16, one process,
the two implementations alternated. Prints images/s, the ratio, and the largest embedding difference. Then the
padding waste of token-budget batches, with and without length bucketing, on the same photos.

    .venv/bin/python benchmarks/naflex_speed.py [--size base] [--max-patches 256] [--batch 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))

SIZES = {  # Siglip2 vision configs: base (ViT-B/16 NaFlex) and a small one for a quick look
    "base": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
    "small": dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6),
}


def photos(n: int) -> list:
    """`n` real photos (scikit-image's) cut to many aspect ratios: whole, 2:1, 1:2, 4:1, 1:4 and 3:2 crops."""
    import skimage.data
    from PIL import Image

    names = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "page",
             "retina", "text", "colorwheel", "coins", "horse", "clock"]
    images = [Image.fromarray(getattr(skimage.data, n)()).convert("RGB") for n in names]
    cuts = []
    for i in range(n):
        image = images[i % len(images)]
        w, h = image.size
        ratio = [None, (2, 1), (1, 2), (4, 1), (1, 4), (3, 2)][i % 6]
        if ratio:  # the largest centred crop of that width:height
            scale = min(w / ratio[0], h / ratio[1])
            cw, ch = int(scale * ratio[0]), int(scale * ratio[1])
            image = image.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))
        cuts.append(image)
    return cuts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    parser.add_argument("--max-patches", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import transformers
    from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

    import dualtower
    from cpu_speed import rel, timed
    from dualtower.apps.machine import describe
    from dualtower.naflex import Patches

    print(f"machine: {describe()}; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"threads {torch.get_num_threads()}")
    config = transformers.Siglip2Config(
        text_config=dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64,
                         projection_size=SIZES[args.size]["hidden_size"]),
        vision_config=dict(SIZES[args.size], num_patches=256, patch_size=16))
    torch.manual_seed(0)
    hf = transformers.Siglip2Model(config).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = dualtower.load(d).eval()
    images = photos(args.batch)
    inputs = Siglip2ImageProcessorPil(patch_size=16, max_num_patches=args.max_patches)(images=images,
                                                                                       return_tensors="pt")
    counts = inputs["pixel_attention_mask"].sum(1)
    print(f"Siglip2 vision {args.size}: batch {args.batch} photos, max_num_patches {args.max_patches}, patches per "
          f"image {int(counts.min())}..{int(counts.max())} (mean {counts.float().mean():.0f})")
    print("| precision | transformers images/s | dualtower images/s | ratio | max rel diff |")
    print("| --- | --- | --- | --- | --- |")
    for dtype in (torch.float32, torch.bfloat16):
        hf_m, ours_m = hf.to(dtype), ours.to(dtype)
        hf_in = dict(inputs, pixel_values=inputs["pixel_values"].to(dtype))
        batch = Patches.from_hf(hf_in)
        with torch.inference_mode():
            def run_hf():
                return hf_m.get_image_features(**hf_in).pooler_output

            def run_ours():
                return ours_m.encode_image(batch)

            diff = rel(run_ours().float(), run_hf().float())
            t_hf, t_ours = [], []
            for _ in range(args.repeats):  # alternated, so both see the machine's same minutes
                t_hf.append(timed(run_hf, 1))
                t_ours.append(timed(run_ours, 1))
        t_hf, t_ours = sorted(t_hf)[len(t_hf) // 2], sorted(t_ours)[len(t_ours) // 2]
        name = "fp32" if dtype == torch.float32 else "bf16"
        print(f"| {name} | {args.batch / t_hf:.1f} | {args.batch / t_ours:.1f} | {t_hf / t_ours:.2f}x | {diff:.1e} |")

    padding_waste(args.max_patches)


def padding_waste(max_patches: int) -> None:
    """Share of padded tokens in token-budget batches (4 x max_patches patches each, padded to each batch's
    longest image), with 1, 4 and 8 length buckets: for the photos resized as the reference does (filling the
    budget), and at their own sizes (`data.upscale=false`: 500 photos scaled to 48..640 pixels on the long side,
    as thumbnails and full photos mix in real collections)."""
    import random

    from dualtower.data.packing import pack_by_tokens
    from dualtower.naflex import grid_for

    rng = random.Random(0)
    cases = {"upscaled to the budget (the reference)": [], "own size (data.upscale=false)": []}
    for photo in photos(500):
        long = rng.randint(48, 640)
        w, h = (long, max(1, photo.height * long // photo.width)) if photo.width >= photo.height else \
            (max(1, photo.width * long // photo.height), long)
        for (name, lengths), max_scale in zip(cases.items(), (100.0, 1.0)):
            rows, cols = grid_for(h, w, 16, max_patches, max_scale)
            lengths.append(rows * cols)
    budget = 4 * max_patches
    print(f"\npadding waste: 500 photos, patch 16, max_num_patches {max_patches}, token budget {budget} per batch")
    print("| images | length buckets | batches | images per batch | padded share |")
    print("| --- | --- | --- | --- | --- |")
    for name, lengths in cases.items():
        for buckets in (1, 4, 8):
            batches = pack_by_tokens(lengths, budget, buckets=buckets, max_length=max_patches)
            padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
            waste = 1 - sum(lengths[i] for b in batches for i in b) / padded
            per = sum(len(b) for b in batches) / len(batches)
            print(f"| {name} | {buckets} | {len(batches)} | {per:.1f} | {waste:.1%} |")


if __name__ == "__main__":
    main()
