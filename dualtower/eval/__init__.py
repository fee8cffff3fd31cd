"""Evaluation: zero-shot classification, retrieval, linear probe."""

from .embed import embed_source, embed_texts
from .linear_probe import linear_probe
from .retrieval import retrieval
from .zeroshot import ZeroShotClassifier, build_classifier, zeroshot

__all__ = ["ZeroShotClassifier", "build_classifier", "embed_source", "embed_texts", "linear_probe", "retrieval",
           "zeroshot"]
