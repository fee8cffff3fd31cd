"""Evaluation: zero-shot classification, retrieval, linear probe. `classifier`, `sources`, `output` and `templates`
need no torch (an ONNX Runtime deployment uses them where torch is not installed); the metrics are loaded where
torch is."""

from .classifier import ZeroShotClassifier

try:
    import torch  # noqa: F401
except ImportError:  # an ONNX Runtime deployment: classifier, sources, output and templates
    pass
else:
    from .embed import embed_source, embed_texts
    from .linear_probe import linear_probe
    from .retrieval import retrieval
    from .zeroshot import build_classifier, zeroshot

__all__ = ["ZeroShotClassifier", "build_classifier", "embed_source", "embed_texts", "linear_probe", "retrieval",
           "zeroshot"]
