"""Zero-shot classification: class names x prompt templates -> a text classifier; top-1/5, per-class recall."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .embed import ImageEmbeddings, embed_texts
from .templates import fill


def build_classifier(model, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """(C, E): per class, the mean of its normalised template embeddings, renormalised (CLIP's prompt ensemble)."""
    texts = [fill(t, name) for name in classnames for t in templates]
    emb = embed_texts(model, texts).view(len(classnames), len(templates), -1)  # (C, T, E)
    return F.normalize(emb.mean(dim=1), dim=-1)


def classify(features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    return features @ classifier.T  # (N, C) cosine similarities


def scores(logits: torch.Tensor, labels: torch.Tensor, classnames: list[str]) -> dict:
    n, c = logits.shape
    topk = logits.topk(min(5, c), dim=1).indices  # (N, k)
    hit = topk == labels[:, None]
    pred = topk[:, 0]
    confusion = torch.zeros(c, c, dtype=torch.long)
    confusion.index_put_((labels, pred), torch.ones(n, dtype=torch.long), accumulate=True)
    support = confusion.sum(dim=1)
    recall = confusion.diagonal().double() / support.clamp(min=1)
    present = support > 0
    if not n:
        raise ValueError("no images to score (every sample was skipped, or the data is empty)")
    topk = {"top5": int(hit.any(dim=1).sum()) / n} if c > 5 else {}  # top-k only where k < classes
    return {
        "top1": int(hit[:, 0].sum()) / n,
        **topk,
        "mean_per_class_recall": float(recall[present].double().mean()),
        "per_class_recall": {name: float(r) for name, r, p in zip(classnames, recall, present) if p},
        "confusion": confusion.tolist(),
        "classes": classnames,
        "n": n,
    }


def zeroshot(model, images: ImageEmbeddings, classnames: list[str], templates: list[str]) -> dict:
    if (images.labels < 0).any():
        raise ValueError("zero-shot classification needs labelled data (a source with classes)")
    logits = classify(images.features, build_classifier(model, classnames, templates))
    return {**scores(logits, images.labels, classnames), "templates": templates}


class ZeroShotClassifier:
    """Labels x prompt templates -> class probabilities for images: the softmax over the model's scaled cosine
    similarities (CLIP's zero-shot classification, as `dualtower classify` prints it)."""

    def __init__(self, model, labels: list[str], templates: list[str]):
        from .. import get_transform

        if len(labels) < 2:
            raise ValueError(f"zero-shot classification needs at least two labels, got {labels}")
        self.model, self.labels = model, list(labels)
        self.transform = get_transform(model)
        self.classifier = build_classifier(model, self.labels, templates).float()  # (C, E)

    @torch.inference_mode()
    def probs(self, images: list) -> torch.Tensor:
        """(B, C) for a list of PIL images."""
        from ..data.loader import collate

        device = next(self.model.parameters()).device
        pixels = collate([self.transform(im) for im in images], self.model.cfg.preprocess).to(device)
        image = self.model.encode_image(pixels, normalize=True).float().cpu()
        return (self.model.scale().float().cpu() * image @ self.classifier.T).softmax(-1)

    def top(self, image, k: int = 3) -> list[tuple[str, float]]:
        """The k most probable labels of one image, with their probabilities."""
        probs = self.probs([image])[0]
        top = probs.topk(min(k, len(self.labels)))
        return [(self.labels[i], p) for p, i in zip(top.values.tolist(), top.indices.tolist())]
