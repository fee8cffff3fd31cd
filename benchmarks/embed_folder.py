"""End to end: `dualtower embed` over a folder of real JPEGs (decode, preprocess, encode), images/s, with the
loader's worker processes overlapping decode and preprocessing with compute; beside it the loop an open_clip
user writes (PIL open, open_clip's torchvision preprocess, encode_image, one batch after another).

The folder: 256 JPEGs (quality 90, 480-1024 px on the long side) cut at random from scikit-image's and
scikit-learn's bundled photos, written once under /tmp.

    .venv/bin/python benchmarks/embed_folder.py [--arch ViT-B-32] [--images 256]
"""

from __future__ import annotations

import argparse
import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")


def make_folder(root: Path, n: int) -> list[Path]:
    from PIL import Image
    from skimage import data
    from sklearn.datasets import load_sample_images

    names = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "hubble_deep_field", "immunohistochemistry")
    photos = [np.asarray(getattr(data, k)()) for k in names if hasattr(data, k)]
    photos += list(load_sample_images().images)
    photos = [Image.fromarray(p).convert("RGB") for p in photos]
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    paths = []
    for i in range(n):
        path = root / f"{i:04d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        photo = rng.choice(photos)
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = photo.crop((x, y, x + cw, y + ch))
        scale = rng.randint(480, 1024) / max(crop.size)
        crop.resize((max(1, int(crop.size[0] * scale)), max(1, int(crop.size[1] * scale)))).save(path, quality=90)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    import open_clip
    from PIL import Image

    import dualtower
    from dualtower.data import open_source
    from dualtower.eval.embed import embed_source
    from dualtower.apps.machine import describe

    folder = Path(f"/tmp/dualtower-bench-jpegs-{args.images}")
    paths = make_folder(folder, args.images)
    print(f"machine: {describe()}; {args.arch}; {len(paths)} JPEGs in {folder}; batch {args.batch}")

    torch.manual_seed(0)
    ref, _, preprocess = open_clip.create_model_and_transforms(args.arch)
    ref.eval()
    from dualtower.convert import open_clip as oc

    ours = dualtower.create_model(args.arch).eval()
    ours.load_state_dict(oc.import_state_dict(ref.state_dict(), ours.cfg, set(ours.state_dict()), "open_clip"))

    def open_clip_loop():
        out = []
        with torch.inference_mode():
            for i in range(0, len(paths), args.batch):
                batch = torch.stack([preprocess(Image.open(p)) for p in paths[i:i + args.batch]])
                out.append(ref.encode_image(batch))
        return torch.cat(out)

    def ours_embed(workers: int):
        return lambda: embed_source(ours, open_source(str(folder), captions=False), batch_size=args.batch, workers=workers)[0]

    rows = []
    start = time.perf_counter()
    want = open_clip_loop()
    rows.append(("open_clip: PIL + torchvision preprocess + encode, serial", time.perf_counter() - start))
    for workers in (0, 1, 2):
        start = time.perf_counter()
        got = ours_embed(workers)()
        rows.append((f"dualtower embed_source, {workers} loader workers", time.perf_counter() - start))
    ours.to(torch.bfloat16)
    start = time.perf_counter()
    ours_embed(2)()
    rows.append(("dualtower embed_source, 2 loader workers, bf16 weights", time.perf_counter() - start))
    cos = torch.nn.functional.cosine_similarity(got.features, torch.nn.functional.normalize(want, dim=-1), dim=-1)
    print(f"embeddings vs open_clip's pipeline: min cosine {float(cos.min()):.5f} (the two resizers differ "
          f"slightly), all {len(got.ids)} images embedded, {sum(got.stats.skipped.values())} skipped")
    base = rows[0][1]
    for name, t in rows:
        print(f"{name:<58} {len(paths) / t:>7.1f} images/s  {base / t:.2f}x")


if __name__ == "__main__":
    main()
