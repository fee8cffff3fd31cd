"""The main job: train a small CLIP from scratch on built-in data, evaluate it on held-out images with prompt
wording never used in training, and write a report directory.

What is new at evaluation: the images (a fixed held-out split) and the wording of the prompts. What is not: the
classes, which the training captions name too. The report says so.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from .. import configtree, load
from ..data import open_source
from ..data.builtin import TRAIN_TEMPLATES
from ..errors import UserError
from ..eval.embed import ImageEmbeddings, embed_source, embed_texts
from ..eval.retrieval import class_captions, retrieval
from ..eval.templates import HELD_OUT, fill
from ..eval.zeroshot import build_classifier, classify, scores
from ..io import write_json, write_text
from ..plots import default_font, heat_map, save_png
from ..train.config import TrainConfig
from ..train.loop import train
from .machine import cpu_name, instruction_sets

RECIPES = {  # steps and batch per built-in data set (the small-digits architecture for both)
    "digits": {"steps": 300, "batch": 128},
    "fashion-mnist": {"steps": 600, "batch": 128},
}


def run(data: str = "builtin:digits", out: str = "demo-out", steps: int | None = None, workers: int = 1,
        seed: int = 0, progress: bool = True) -> dict:
    start = time.perf_counter()
    name = data.removeprefix("builtin:")
    if not data.startswith("builtin:") or name not in RECIPES:
        raise UserError(f"the demo runs on built-in data: {', '.join('builtin:' + n for n in RECIPES)}")
    test_source = open_source(f"{data}:test")  # fails early, naming the package, when the data is absent
    recipe = RECIPES[name]
    out_dir = Path(out)
    train_dir = out_dir / "train"
    if train_dir.exists():
        shutil.rmtree(train_dir)
    cfg = configtree.build(TrainConfig, {
        "model": {"arch": "small-digits"},
        "data": {"train": data, "batch_size": recipe["batch"], "workers": workers},
        "train": {"steps": steps or recipe["steps"], "seed": seed, "out": str(train_dir), "progress": progress},
    })

    # 1. Train from scratch.
    summary = train(cfg)
    train_seconds = summary["seconds"]
    model = load(summary["checkpoint"])

    # 2. Zero-shot classification of held-out images with unseen prompt wording.
    templates = HELD_OUT[name]
    images, _ = embed_source(model, test_source, batch_size=256, workers=workers)
    classifier = build_classifier(model, test_source.classes, templates)
    logits = classify(images.features, classifier)
    zs = scores(logits, images.labels, test_source.classes)

    # 3. Retrieval on the held-out images, every held-out prompt as a caption of each image of its class.
    retr = retrieval(model, class_captions(images, test_source.classes, templates), match="class")
    total_seconds = time.perf_counter() - start

    # 4. The report.
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(train_dir / "loss.png", out_dir / "loss.png")
    heat_map(zs.confusion, out_dir / "confusion.png", "zero-shot confusion (rows: true, columns: predicted)",
             test_source.classes, test_source.classes)
    probs = (model.scale().detach() * logits).softmax(dim=-1)
    _prediction_grid(test_source, images, probs, out_dir / "predictions.png")
    sims = _similarity(model, test_source, images, templates[0], out_dir / "similarity.png")
    results = {
        "zeroshot_top1": zs.top1,
        "zeroshot_top5": zs.top5,
        "zeroshot_mean_per_class_recall": zs.mean_per_class_recall,
        "zeroshot_per_class_recall": zs.per_class_recall,
        "retrieval": retr.to_dict(),
        "train_seconds": train_seconds,
        "total_seconds": total_seconds,
        "data": {"train": data, "test": f"{data}:test", "train_samples": summary["data"],
                 "test_images": zs.n, "test_skipped": dict(images.stats.skipped),
                 "what_is_new": "held-out images and prompt wording never used in training; not new classes"},
        "templates": {"train": TRAIN_TEMPLATES[name], "eval": templates},
        "model": {"arch": "small-digits", "steps": cfg.train.steps, "batch_size": cfg.data.batch_size,
                  "parameters": sum(p.numel() for p in model.parameters()), "checkpoint": summary["checkpoint"]},
        "machine": {"cpu": cpu_name(), "instruction_sets": instruction_sets(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "similarity_example": sims,
    }
    write_json(out_dir / "results.json", results)
    _write_report(out_dir, results, test_source.classes, zs)
    _print_summary(out_dir, results)
    return results


def _prediction_grid(source, images: ImageEmbeddings, probs: torch.Tensor, path: Path, n: int = 24) -> None:
    """Held-out images (the first n) with their top-3 zero-shot predictions; green when the top one is right."""
    cols, cell, text_h = 6, 96, 66
    rows = -(-min(n, len(images.ids)) // cols)
    canvas = Image.new("RGB", (cols * (cell + 12), rows * (cell + text_h + 8)), "white")
    draw, font = ImageDraw.Draw(canvas), default_font(11)
    index = {source.sample_id(i): i for i in range(len(source))}
    for k, sample_id in enumerate(images.ids[:n]):
        r, c = divmod(k, cols)
        x, y = c * (cell + 12) + 6, r * (cell + text_h + 8) + 4
        image = source.load(index[sample_id]).image.resize((cell, cell), Image.Resampling.NEAREST)
        canvas.paste(image, (x, y))
        top = probs[k].topk(3)
        right = int(top.indices[0]) == int(images.labels[k])
        draw.rectangle([x - 2, y - 2, x + cell + 1, y + cell + 1], outline=(0, 150, 0) if right else (200, 0, 0),
                       width=2)
        for j, (p, ci) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
            draw.text((x, y + cell + 3 + 15 * j), f"{source.classes[ci][:11]} {p:.2f}", fill="black", font=font)
        if not right:  # the true label beside the wrong prediction
            draw.text((x, y + cell + 3 + 15 * 3), f"true: {source.classes[int(images.labels[k])][:11]}",
                      fill=(200, 0, 0), font=font)
    save_png(canvas, path)


def _similarity(model, source, images: ImageEmbeddings, template: str, path: Path) -> dict:
    """Cosine similarity of one held-out image per class against one prompt per class."""
    picks = [int((images.labels == c).nonzero()[0]) for c in range(len(source.classes))
             if (images.labels == c).any()]
    texts = [fill(template, name) for name in source.classes]
    sims = images.features[picks] @ embed_texts(model, texts).T
    labels = [f"image: {source.classes[int(images.labels[i])]}" for i in picks]
    heat_map([[round(v, 2) for v in row] for row in sims.tolist()], path,
             "cosine similarity (each row: one held-out image; each column: one class prompt)",
             labels, [f"text: {n}" for n in source.classes],
             cell=44)
    return {"template": template, "images": labels, "texts": texts, "cosine": sims.tolist()}


def _write_report(out_dir: Path, results: dict, classes: list[str], zs: dict) -> None:
    r, d, m = results["retrieval"], results["data"], results["model"]
    recall_rows = "\n".join(
        f"| {direction.replace('_', ' ')} | " + " | ".join(f"{v:.3f}" for v in r[direction].values()) + " |"
        for direction in ("image_to_text", "text_to_image"))
    per_class = "\n".join(f"| {c} | {zs.per_class_recall.get(c, float('nan')):.3f} |" for c in classes)
    text = f"""# dualtower demo: a CLIP trained from scratch on {d['train']}

**Zero-shot top-1 {results['zeroshot_top1']:.1%}**, top-5 {results['zeroshot_top5']:.1%}, mean per-class recall
{results['zeroshot_mean_per_class_recall']:.1%}, on {d['test_images']} held-out images.

What is new at evaluation: the images (a held-out split never trained on) and the wording of the prompts (never
used in a training caption). What is not: the classes, which the training captions name too.

- Training: {m['steps']} steps of batch {m['batch_size']}, architecture {m['arch']} ({m['parameters'] / 1e6:.1f}M
  parameters), {results['train_seconds']:.0f} s; whole demo {results['total_seconds']:.0f} s on
  {results['machine']['cpu']} ({results['machine']['threads']} threads).
- Training samples: {d['train_samples']['accepted']} accepted, {sum(d['train_samples']['skipped'].values())} skipped.
- Training prompts: {'; '.join(results['templates']['train'])}
- Evaluation prompts: {'; '.join(results['templates']['eval'])}

## Retrieval on the held-out images

Each image's captions are the evaluation prompts filled with its class ({r['n_images']} images, {r['n_texts']}
distinct texts; a match is any text of the image's class).

| direction | R@1 | R@5 | R@10 |
|---|---|---|---|
{recall_rows}

## Per-class recall

| class | recall |
|---|---|
{per_class}

## Pictures

- ![loss](loss.png) training loss
- ![confusion](confusion.png) zero-shot confusion matrix
- ![predictions](predictions.png) held-out images with their top-3 predictions (green: right)
- ![similarity](similarity.png) image-text cosine similarities
"""
    write_text(out_dir / "report.md", text)


def _print_summary(out_dir: Path, results: dict) -> None:
    r = results["retrieval"]
    print()
    print(f"zero-shot on {results['data']['test_images']} held-out images, prompt wording unseen in training "
          f"(the classes are the training classes):")
    print(f"  top-1 {results['zeroshot_top1']:.1%}   top-5 {results['zeroshot_top5']:.1%}   "
          f"mean per-class recall {results['zeroshot_mean_per_class_recall']:.1%}")
    print("retrieval R@1/5/10:  image->text " + " / ".join(f"{v:.3f}" for v in r["image_to_text"].values())
          + "   text->image " + " / ".join(f"{v:.3f}" for v in r["text_to_image"].values()))
    print(f"time: training {results['train_seconds']:.0f} s, total {results['total_seconds']:.0f} s")
    print(f"report: {os.path.join(out_dir, 'report.md')} (results.json, loss.png, confusion.png, predictions.png, "
          "similarity.png)")
