"""Near-duplicates: the synthetic set, the perceptual-hash threshold's curve, and `dedupe` end to end.

    .venv/bin/python benchmarks/dedupe.py [--out DIR] [--arch ViT-B-32]

The set (written to DIR, made the same way every run from the real photos scikit-image and scikit-learn ship):
for each of 20 photos, true duplicates (the photo as PNG; JPEG at quality 90 with EXIF and the same JPEG with it
stripped; JPEG at 50 and 25; resized to 50% and 75%; cropped by 3% a side; WebP) and burst-like pictures that
are not duplicates (a view shifted by 12% of the width; a neighbouring frame: moved 6%, zoomed 4%, turned 1.5
degrees and 6% brighter), plus the stereo pair of scikit-image's motorcycle (two real neighbouring views: each
of its left view's duplicates against each of its right view's is a burst-like pair).

It prints, for each `max_distance` of the perceptual hash (every pair of images compared, no embedding gate),
precision and recall over the true-duplicate pairs and the share of burst-like pairs kept apart; then
`dedupe.find` on an index of the set at its defaults, with a random-weight `--arch` (no trained weights here:
the embedding gate is measured for what it passes, not calibrated).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

DUPLICATES = ("png", "q90-exif", "q90-stripped", "q50", "q25", "half", "three-quarters", "crop3", "webp")
BURST = ("shifted", "frame")


def sources() -> dict[str, Image.Image]:
    from skimage import data
    from sklearn.datasets import load_sample_images

    names = ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field", "immunohistochemistry",
             "retina", "coins", "brick", "grass", "gravel", "moon", "clock", "cell", "colorwheel")
    out = {n: Image.fromarray(np.asarray(getattr(data, n)())).convert("RGB") for n in names}
    left, right, _ = data.stereo_motorcycle()
    out["motorcycle-left"], out["motorcycle-right"] = Image.fromarray(left), Image.fromarray(right)
    for i, im in enumerate(load_sample_images().images):
        out[f"sklearn-{i}"] = Image.fromarray(im)
    for name, im in out.items():
        im.thumbnail((640, 640), Image.LANCZOS)
    return out


def make_set(out: Path) -> dict:
    """Writes the set; returns {"groups": {source: [files of its true duplicates]}, "burst": [[a, b], ...]}."""
    out.mkdir(parents=True, exist_ok=True)
    groups, burst = {}, []
    for name, im in sources().items():
        w, h = im.size
        files = {}

        def save(kind: str, image: Image.Image, ext: str, **options) -> None:
            path = out / f"{name}-{kind}.{ext}"
            image.save(path, **options)
            files[kind] = path.name

        exif = Image.Exif()
        exif[0x010F] = "dualtower test camera"  # Make
        exif[0x0132] = "2024:05:01 12:00:00"  # DateTime
        save("png", im, "png")
        save("q90-exif", im, "jpg", quality=90, exif=exif.tobytes())
        save("q90-stripped", im, "jpg", quality=90)  # the same pixels, no EXIF
        save("q50", im, "jpg", quality=50)
        save("q25", im, "jpg", quality=25)
        save("half", im.resize((w // 2, h // 2), Image.LANCZOS), "png")
        save("three-quarters", im.resize((w * 3 // 4, h * 3 // 4), Image.LANCZOS), "jpg", quality=85)
        dx, dy = round(w * 0.03), round(h * 0.03)
        save("crop3", im.crop((dx, dy, w - dx, h - dy)), "jpg", quality=90)
        save("webp", im, "webp", quality=85)
        duplicates = [files[k] for k in DUPLICATES]
        cw, ch = round(w * 0.85), round(h * 0.85)
        x0, y0 = (w - cw) // 2, (h - ch) // 2
        shift = round(w * 0.12)
        save("shifted", im.crop((x0 + shift, y0, x0 + shift + cw, y0 + ch)), "jpg", quality=90)
        frame = im.rotate(1.5, resample=Image.BICUBIC, translate=(round(w * 0.06), 0)).crop(
            (round(w * 0.02), round(h * 0.02), w - round(w * 0.02), h - round(h * 0.02))).resize((w, h))
        frame = Image.eval(frame, lambda v: min(255, round(v * 1.06)))
        save("frame", frame, "jpg", quality=90)
        groups[name] = duplicates
        burst += [[d, files[b]] for d in duplicates for b in BURST] + [[files["shifted"], files["frame"]]]
    burst += [[f"motorcycle-left-{a}", f"motorcycle-right-{b}"] for a, b in itertools.product(DUPLICATES, DUPLICATES)]
    labels = {"groups": groups, "burst": [[_ext(out, a), _ext(out, b)] for a, b in burst]}
    (out / "labels.json").write_text(json.dumps(labels, indent=1))
    return labels


def _ext(out: Path, name: str) -> str:
    """A file name as written (the motorcycle pairs name them without their extension)."""
    return name if (out / name).exists() else next(p.name for p in out.glob(name + ".*"))


def pair_sets(labels: dict) -> tuple[set, set]:
    positive = {frozenset(p) for files in labels["groups"].values() for p in itertools.combinations(files, 2)}
    return positive, {frozenset(p) for p in labels["burst"]}


def hash_curve(out: Path, labels: dict, arch: str) -> None:
    import dualtower
    from dualtower.images import eval_transform, open_image
    from dualtower.search.dedupe import distance, hashes as image_hashes
    from dualtower.search.records import sample_and_thumbnail

    files = sorted(p.name for p in out.iterdir() if p.suffix != ".json")
    transform = eval_transform(dualtower.get_config(arch).preprocess)  # thumbnails as an index of `arch` makes them
    hashes = {f: image_hashes(sample_and_thumbnail(transform, open_image(out / f))[1]) for f in files}
    positive, burst = pair_sets(labels)
    pairs = {frozenset(p): distance(hashes[p[0]], hashes[p[1]]) for p in itertools.combinations(files, 2)}
    print(f"{len(files)} images: {len(positive)} true-duplicate pairs, {len(burst)} burst-like pairs, "
          f"{len(pairs) - len(positive) - len(burst)} other pairs (different photos)")
    print("max_distance  precision  recall  burst pairs apart")
    for t in range(0, 13):
        found = {p for p, d in pairs.items() if d <= t}
        tp = len(found & positive)
        precision = tp / len(found) if found else 1.0
        apart = 1 - len(found & burst) / len(burst)
        print(f"{t:>12}  {precision:9.4f}  {tp / len(positive):6.4f}  {apart:17.4f}")


def end_to_end(out: Path, labels: dict, arch: str) -> None:
    import torch

    import dualtower
    from dualtower.search import SearchIndex, build_index, dedupe

    torch.manual_seed(0)
    model = dualtower.create_model(arch)
    with tempfile.TemporaryDirectory() as d:
        build_index(str(out), model, Path(d) / "index", workers=0)
        index = SearchIndex(Path(d) / "index", model=model)
        groups = dedupe.find(index)
        items = index.store.items([i for g in groups for i in g.ids])
        found = {frozenset((items[a].key, items[b].key)) for g in groups for a, b in itertools.combinations(g.ids, 2)}
        index.close()
    positive, burst = pair_sets(labels)
    tp = len(found & positive)
    print(f"dedupe.find at its defaults (min_cosine {dedupe.MIN_COSINE}, max_distance {dedupe.MAX_DISTANCE}; "
          f"{arch}, random weights): {len(groups)} groups; precision {tp / max(len(found), 1):.4f}, recall "
          f"{tp / len(positive):.4f}, burst pairs apart {1 - len(found & burst) / len(burst):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="where to write the set (default: a temporary folder)")
    parser.add_argument("--arch", default="ViT-B-32")
    args = parser.parse_args()
    from dualtower.apps.machine import describe

    print(f"machine: {describe()}")
    with tempfile.TemporaryDirectory() as d:
        out = args.out or Path(d) / "set"
        labels = make_set(out)
        hash_curve(out, labels, args.arch)
        end_to_end(out, labels, args.arch)


if __name__ == "__main__":
    main()
