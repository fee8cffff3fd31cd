"""Built-in real data: scikit-learn's bundled digits, and Fashion-MNIST from Debian's dataset-fashion-mnist.

Both have fixed held-out splits. Training captions come from templates; evaluation may use other wording.
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
from PIL import Image

from .base import Sample, Source

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
FASHION_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                 "ankle boot"]

TRAIN_TEMPLATES = {
    "digits": ["a photo of the digit {}", "a picture of the number {}", "the handwritten digit {}",
               "{} written by hand", "a scan of a handwritten {}"],
    "fashion-mnist": ["a photo of a {}", "a picture of a {}", "a product photo of a {}", "a {} on a plain background",
                      "a small grayscale photo of a {}"],
}
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
HELD_OUT_FRACTION = 0.2  # digits: the last 20% of a fixed permutation (seed 0) is held out


class ArraySource(Source):
    """Grayscale images in a uint8 array (N, H, W) with integer labels; captions from templates."""

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray, classes: list[str],
                 templates: list[str], ids: np.ndarray):
        self.name, self.images, self.labels, self.classes = name, images, labels, classes
        self.templates, self.ids = templates, ids

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> Sample:
        label = int(self.labels[index])
        # The template rotates with the record, so every record has one fixed caption (exact resume needs that).
        caption = self.templates[int(self.ids[index]) % len(self.templates)].format(self.classes[label])
        image = Image.fromarray(self.images[index], mode="L").convert("RGB")
        return Sample(image=image, caption=caption, id=self.sample_id(index), label=label)

    def sample_id(self, index: int) -> str:
        return f"{self.name}:{int(self.ids[index])}"


def digits(split: str = "train") -> ArraySource:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # 0..16 -> 0..255
    order = np.random.default_rng(0).permutation(len(images))
    cut = int(len(images) * (1 - HELD_OUT_FRACTION))
    chosen = order[:cut] if split == "train" else order[cut:]
    return ArraySource(f"digits-{split}", images[chosen], d.target[chosen], DIGIT_NAMES, TRAIN_TEMPLATES["digits"],
                       chosen)


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist(split: str = "train", root: str = FASHION_DIR) -> ArraySource:
    prefix = "train" if split == "train" else "t10k"
    images_path = os.path.join(root, f"{prefix}-images-idx3-ubyte.gz")
    labels_path = os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz")
    if not (os.path.isfile(images_path) and os.path.isfile(labels_path)):
        raise FileNotFoundError(
            f"Fashion-MNIST files not found in {root}; they come with Debian's package dataset-fashion-mnist "
            "(apt-get install dataset-fashion-mnist)")
    images, labels = _read_idx(images_path), _read_idx(labels_path)
    return ArraySource(f"fashion-mnist-{split}", images, labels, FASHION_NAMES, TRAIN_TEMPLATES["fashion-mnist"],
                       np.arange(len(labels)))
