"""Zero-shot classification with any runtime (no torch): labels x prompt templates -> a text classifier."""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..runtimes import as_embedder, normalize
from .templates import fill


def class_embeddings(embedder, classnames: list[str], templates: list[str]) -> np.ndarray:
    """(C, E): per class, the mean of its normalised template embeddings, renormalised (CLIP's prompt ensemble)."""
    texts = embedder.embed_texts([fill(t, name) for name in classnames for t in templates])
    return normalize(texts.reshape(len(classnames), len(templates), -1).mean(axis=1))


class ZeroShotClassifier:
    """Labels x prompt templates -> class probabilities for images: the softmax over the model's scaled cosine
    similarities (CLIP's zero-shot classification, as `dualtower classify` prints it). `model`: an Embedder of
    any runtime, or a DualEncoder."""

    def __init__(self, model, labels: list[str], templates: list[str]):
        if len(labels) < 2:
            raise UserError(f"zero-shot classification needs at least two labels, got {labels}")
        self.embedder, self.labels = as_embedder(model), list(labels)
        self.scale = self.embedder.logit_scale
        if self.scale is None:
            raise UserError(f"{self.embedder.cfg.name}: a one-tower model has no logit scale to classify with")
        self.classifier = class_embeddings(self.embedder, self.labels, templates)  # (C, E)

    def probs(self, images: list) -> np.ndarray:
        """(B, C) for a list of PIL images."""
        logits = self.scale * self.embedder.embed_images(images) @ self.classifier.T
        logits = np.exp(logits - logits.max(axis=1, keepdims=True))
        return logits / logits.sum(axis=1, keepdims=True)

    def top(self, image, k: int = 3) -> list[tuple[str, float]]:
        """The k most probable labels of one image, with their probabilities."""
        probs = self.probs([image])[0]
        order = np.argsort(-probs, kind="stable")[: min(k, len(self.labels))]
        return [(self.labels[i], float(probs[i])) for i in order]
