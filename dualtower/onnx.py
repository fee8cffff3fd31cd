"""Running exported towers on ONNX Runtime, without PyTorch (`dualtower export --format onnx` writes them).

    model = dualtower.onnx.load("exported")
    model.embed_images([PIL images])      -> (N, E) float32, L2-normalised
    model.embed_texts(["a photo of a cat"]) -> (N, E)
    model.encode_image(pixels) / model.encode_text(ids)   numpy in, numpy out, like DualEncoder's

The model is an Embedder (`dualtower.runtimes`): zero-shot classification (`dualtower.eval.ZeroShotClassifier`),
source embedding, index building and search take it as they take a PyTorch model. Needs numpy, Pillow,
onnxruntime and dualtower's tokenizers and preprocessing, not torch.
"""

from .runtimes.onnx import OnnxModel, load

__all__ = ["OnnxModel", "load"]
