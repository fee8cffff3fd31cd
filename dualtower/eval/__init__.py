"""Evaluation: zero-shot classification, retrieval, linear probe. `output` and `templates` need no torch (an ONNX
Runtime deployment uses them where torch is not installed); the rest is loaded where torch is."""

try:
    import torch  # noqa: F401
except ImportError:  # an ONNX Runtime deployment: only eval.output and eval.templates are used
    pass
else:
    from .embed import embed_source, embed_texts
    from .linear_probe import linear_probe
    from .retrieval import retrieval
    from .zeroshot import ZeroShotClassifier, build_classifier, zeroshot

__all__ = ["ZeroShotClassifier", "build_classifier", "embed_source", "embed_texts", "linear_probe", "retrieval",
           "zeroshot"]
