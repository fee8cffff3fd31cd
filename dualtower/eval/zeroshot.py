"""Zero-shot classification: class names x prompt templates -> a text classifier; top-1/5, per-class recall."""

from __future__ import annotations

import dataclasses

import torch

from ..errors import UserError
from ..runtimes import as_embedder
from .classifier import ZeroShotClassifier, class_embeddings
from .embed import ImageEmbeddings
from .results import ClassificationResult


def build_classifier(model, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """(C, E): per class, the mean of its normalised template embeddings, renormalised (CLIP's prompt ensemble)."""
    return torch.from_numpy(class_embeddings(as_embedder(model), classnames, templates))


def classify(features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    return features @ classifier.T  # (N, C) cosine similarities


def scores(logits: torch.Tensor, labels: torch.Tensor, classnames: list[str]) -> ClassificationResult:
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
        raise UserError("no images to score (every sample was skipped, or the data is empty)")
    return ClassificationResult(
        top1=int(hit[:, 0].sum()) / n,
        top5=int(hit.any(dim=1).sum()) / n if c > 5 else None,  # top-k only where k < classes
        mean_per_class_recall=float(recall[present].double().mean()),
        per_class_recall={name: float(r) for name, r, p in zip(classnames, recall, present) if p},
        confusion=confusion.tolist(),
        classes=classnames,
        n=n,
    )


def zeroshot(model, images: ImageEmbeddings, classnames: list[str], templates: list[str]) -> ClassificationResult:
    if (images.labels < 0).any():
        raise UserError("zero-shot classification needs labelled data (a source with classes)")
    logits = classify(images.features, build_classifier(model, classnames, templates))
    return dataclasses.replace(scores(logits, images.labels, classnames), templates=list(templates))


__all__ = ["ZeroShotClassifier", "build_classifier", "classify", "scores", "zeroshot"]
