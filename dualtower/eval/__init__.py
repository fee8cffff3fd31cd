"""Evaluation: zero-shot classification, retrieval, linear probe. Imported lazily, so that `eval.output` and
`eval.templates` (which an ONNX Runtime deployment uses) load without torch."""

from importlib import import_module

_WHERE = {"embed_source": "embed", "embed_texts": "embed", "linear_probe": "linear_probe", "retrieval": "retrieval",
          "ZeroShotClassifier": "zeroshot", "build_classifier": "zeroshot", "zeroshot": "zeroshot"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ZeroShotClassifier", "build_classifier", "embed_source", "embed_texts", "linear_probe", "retrieval",
           "zeroshot"]
