"""Built-in real data: scikit-learn's bundled digits, and Fashion-MNIST from Debian's dataset-fashion-mnist.

Both have fixed held-out splits. Training captions come from templates; evaluation may use other wording.
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
from PIL import Image

from ..errors import NotFound, UserError
from .base import Sample, Source

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
FASHION_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                 "ankle boot"]

TRAIN_TEMPLATES = {
    "digits": ["a photo of the digit {c}", "a picture of the number {c}", "the handwritten digit {c}",
               "{c} written by hand", "a scan of a handwritten {c}", "{c}", "the digit {c}", "a {c}",
               "a handwritten number: {c}", "someone wrote the number {c}", "a small scan showing {c}",
               "an 8 by 8 pixel digit {c}"],
    "fashion-mnist": ["a photo of a {c}", "a picture of a {c}", "a product photo of a {c}",
                      "a {c} on a plain background", "a small grayscale photo of a {c}", "{c}", "a {c}",
                      "a catalogue photo of a {c}", "a low resolution photo of a {c}", "this is a {c}",
                      "a {c} for sale", "a centered photo of a {c}"],
}
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
HELD_OUT_FRACTION = 0.2  # digits: the last 20% of a fixed permutation (seed 0) is held out


class ArraySource(Source):
    """Grayscale images in a uint8 array (N, H, W) with integer labels; captions from templates.

    By default record i is image i with one template (rotating with the image id, so every record has one
    fixed caption). With `every_template`, each image appears once per template (several captions per image,
    for retrieval).
    """

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray, classes: list[str],
                 templates: list[str], ids: np.ndarray, every_template: bool = False):
        self.name, self.images, self.labels, self.classes = name, images, labels, classes
        self.templates, self.ids = templates, ids
        self.per_image = len(templates) if every_template else 1

    def with_templates(self, templates: list[str], every_template: bool = True) -> "ArraySource":
        return ArraySource(self.name, self.images, self.labels, self.classes, templates, self.ids, every_template)

    def __len__(self) -> int:
        return len(self.labels) * self.per_image

    def load(self, index: int) -> Sample:
        image_index, t = divmod(index, self.per_image)
        label = int(self.labels[image_index])
        template = self.templates[t if self.per_image > 1 else int(self.ids[image_index]) % len(self.templates)]
        image = Image.fromarray(self.images[image_index], mode="L").convert("RGB")
        return Sample(image=image, caption=template.format(c=self.classes[label]), id=self.sample_id(index),
                      label=label, image_key=f"{self.name}:{int(self.ids[image_index])}")

    def sample_id(self, index: int) -> str:
        image_index, t = divmod(index, self.per_image)
        suffix = f"#{t}" if self.per_image > 1 else ""
        return f"{self.name}:{int(self.ids[image_index])}{suffix}"


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
        raise UserError(f"{path}: not an IDX file of unsigned bytes")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist(split: str = "train", root: str = FASHION_DIR) -> ArraySource:
    prefix = "train" if split == "train" else "t10k"
    images_path = os.path.join(root, f"{prefix}-images-idx3-ubyte.gz")
    labels_path = os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz")
    if not (os.path.isfile(images_path) and os.path.isfile(labels_path)):
        raise NotFound(
            f"Fashion-MNIST files not found in {root}; they come with Debian's package dataset-fashion-mnist "
            "(apt-get install dataset-fashion-mnist)")
    images, labels = _read_idx(images_path), _read_idx(labels_path)
    return ArraySource(f"fashion-mnist-{split}", images, labels, FASHION_NAMES, TRAIN_TEMPLATES["fashion-mnist"],
                       np.arange(len(labels)))
