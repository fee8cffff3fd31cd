"""The self-check: fixed probe inputs, their reference embeddings, and the check a runtime passes before it serves.

An export records what PyTorch computes in fp32 for a few fixed images and texts (`probes.safetensors` beside the
graphs). A runtime that loads the export (ONNX Runtime, OpenVINO, at whatever precision) embeds the same probes
through its own preprocessing and tokenizer, and refuses to run when any probe's cosine to the reference falls
below the floor of its precision (`FLOORS`). This catches what silently wrong accelerated paths do in other search
products (a graph quantised badly, a kernel that returns garbage on one processor, a preprocessing mismatch):
empty or wrong results with no error. The PyTorch runtime checks bf16 against its own fp32 weights the same way.

Needs numpy and Pillow, not torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError

VERSION = 1  # of the probe images below: a change to them is a new version, and old records are not compared
FILE = "probes.safetensors"
TEXTS = ("a photo of a cat", "a diagram of a circuit board", "two dogs playing in the snow", "the number seven")
# The lowest cosine to the fp32 reference each precision may give on any probe. bf16 and fp16 keep about three
# significant digits per operation; int8 quantises every product's inputs (cosine 0.995 on ViT-B towers, RESULTS.md).
FLOORS = {"fp32": 0.9999, "bf16": 0.999, "fp16": 0.999, "int8": 0.99}


def images(size: int = 256) -> list:
    """Four RGB images made here, the same on every machine: a colour gradient with a disc, stripes, smoothed noise,
    and blocks of flat colour (edges, textures, flat areas: what a broken kernel or preprocessing shows up on)."""
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    disc = ((x - 0.6) ** 2 + (y - 0.4) ** 2 < 0.08).astype(np.float32)
    gradient = np.stack([x, y, 1 - x * y], -1) * (1 - disc[..., None]) + disc[..., None] * [0.9, 0.2, 0.1]
    stripes = np.stack([0.5 + 0.5 * np.sin(2 * np.pi * (6 * x + 2 * y)), 0.5 + 0.5 * np.cos(2 * np.pi * 9 * y),
                        x], -1)
    rng = np.random.default_rng(20261206)
    noise = rng.random((size // 8, size // 8, 3)).repeat(8, 0).repeat(8, 1)
    blocks = np.zeros((size, size, 3), np.float32)
    for i, colour in enumerate(([0.1, 0.3, 0.8], [0.9, 0.9, 0.2], [0.2, 0.7, 0.3], [0.6, 0.1, 0.5])):
        blocks[(i // 2) * size // 2:(i // 2 + 1) * size // 2, (i % 2) * size // 2:(i % 2 + 1) * size // 2] = colour
    arrays = (gradient, stripes, noise, blocks)
    return [Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8), "RGB") for a in arrays]


def text_ids(embedder, texts=TEXTS) -> np.ndarray:
    """(len(texts), L) int64: `texts` through the model's tokenizer; for a model that came without its tokenizer
    files (a SentencePiece model made from a config), fixed ids of its vocabulary, each row ended as its pooling rule
    wants."""
    try:
        return np.asarray(embedder.tokenizer.numpy(list(texts)), np.int64)
    except UserError:
        cfg = embedder.cfg.text
        length = min(cfg.context_length, 16)
        rng = np.random.default_rng(7)
        ids = rng.integers(1, max(2, min(cfg.vocab_size, 1000)), (len(texts), length))
        if cfg.pool == "eot":
            ids[ids == cfg.eot_id] = 1
            ends = [length - 1, length // 2, 3 % length, 1 % length]
            ends += list(rng.integers(1, length, max(0, len(texts) - len(ends))))
            ids[np.arange(len(texts)), ends[:len(texts)]] = cfg.eot_id
        return ids


def timing_work(embedder, tower: str):
    """(fn, items): one batch of the probes twice over through `embedder`'s own preprocessing or token ids, as
    `fn()` embeds it: what `--precision auto` and `--runtime auto` time a tower on."""
    if tower == "image":
        pictures = images() * 2
        batch = embedder.collate([embedder.transform(im) for im in pictures])
        return (lambda: embedder.embed_pixels(batch)), len(pictures)
    ids = np.concatenate([text_ids(embedder)] * 2)
    return (lambda: embedder.embed_ids(ids)), len(ids)


def embed(embedder, ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The probes through `embedder` (any runtime): {"image": (4, E), "text": (4, E)} for the towers it has; the
    text rows from `ids` (an export's recorded ids), else `text_ids`."""
    out = {}
    if embedder.cfg.vision is not None:
        out["image"] = embedder.embed_images(images())
    if embedder.cfg.text is not None:
        out["text"] = embedder.embed_ids(text_ids(embedder) if ids is None else ids)
    return out


def save(embedder, directory: Path) -> dict:
    """Embeds the probes with `embedder` (PyTorch, fp32: the reference) into `directory` (probes.safetensors, with
    the text rows' token ids); returns what config.json records of it."""
    from safetensors.numpy import save_file

    ids = text_ids(embedder) if embedder.cfg.text is not None else None
    reference = embed(embedder, ids)
    tensors = {k: np.ascontiguousarray(v, np.float32) for k, v in reference.items()}
    if ids is not None:
        tensors["text_ids"] = np.ascontiguousarray(ids, np.int64)
    save_file(tensors, str(directory / FILE))
    return {"file": FILE, "version": VERSION, "texts": list(TEXTS), "towers": sorted(reference)}


def load(directory: Path, record) -> dict[str, np.ndarray] | None:
    """The reference an export recorded, or None when it recorded none (older exports) or another probe version."""
    if record is None:
        return None
    if not isinstance(record, dict) or record.get("file") != FILE or not isinstance(record.get("version"), int):
        raise UserError(f"{directory}: config.json: probes is not a record of {FILE}")
    if record["version"] != VERSION:
        return None
    path = Path(directory) / FILE
    if not path.is_file():
        raise UserError(f"{directory}: config.json names {FILE}, which is missing")
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))  # "image", "text" (4, E) float32 and "text_ids" (4, L) int64
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a safetensors file ({e})") from None


@dataclass(frozen=True)
class CheckResult:
    """The lowest cosine to the reference per tower, and the floor it was held to."""

    cosines: dict[str, float]
    floor: float

    @property
    def passed(self) -> bool:
        return all(c >= self.floor for c in self.cosines.values())

    def summary(self) -> str:
        return ", ".join(f"{tower} {c:.5f}" for tower, c in self.cosines.items()) + f" (floor {self.floor})"


def compare(found: dict[str, np.ndarray], reference: dict[str, np.ndarray], precision: str) -> CheckResult:
    """Each tower's lowest cosine between `found` and `reference` over the probes."""
    cosines = {}
    for tower, ref in reference.items():
        if tower not in found:
            continue
        a, b = np.asarray(found[tower], np.float64), np.asarray(ref, np.float64)
        if a.shape != b.shape:
            cosines[tower] = -1.0
            continue
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cos = (a * b).sum(1) / np.maximum(norms, 1e-12)
        cosines[tower] = float(np.nan_to_num(cos, nan=-1.0).min())
    return CheckResult(cosines, FLOORS[precision])


def check(embedder, reference: dict[str, np.ndarray], precision: str, what: str) -> CheckResult:
    """Embeds the probes with `embedder` (the text rows from reference["text_ids"] when it has them) and raises
    UserError, naming `what` and the cosines, when any tower is below the floor of `precision`; returns the result
    otherwise."""
    reference = dict(reference)
    ids = reference.pop("text_ids", None)
    result = compare(embed(embedder, ids), reference, precision)
    if not result.passed:
        raise UserError(f"{what}: refused by the self-check: the probe embeddings' cosine to the fp32 reference is "
                        f"{result.summary()}: it computes something other than the model on this machine (a "
                        "corrupted or badly lowered graph, or a kernel at fault); run it at another --precision or "
                        "--runtime, or export it again")
    return result
