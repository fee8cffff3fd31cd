"""Running exported towers on ONNX Runtime, without PyTorch (`dualtower export --format onnx` writes them).

    model = dualtower.onnx.load("exported")
    model.embed_images([PIL images])      -> (N, E) float32, L2-normalised
    model.embed_texts(["a photo of a cat"]) -> (N, E)
    model.encode_image(pixels) / model.encode_text(ids)   numpy in, numpy out, like DualEncoder's

This module needs numpy, Pillow, onnxruntime and dualtower's tokenizers and preprocessing, not torch.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .config import ModelConfig
from .errors import require


class OnnxModel:
    """The towers of an export folder, each an ONNX Runtime session. `threads`: intra-op threads (default:
    ONNX Runtime's choice); `providers`: e.g. ["CUDAExecutionProvider", "CPUExecutionProvider"]. `spinning=False`
    stops idle worker threads from spinning while they wait for work: right for a service answering a few queries
    at a time beside other processes (ONNX Runtime spins by default, which suits bulk embedding)."""

    def __init__(self, directory: "str | os.PathLike", threads: int | None = None,
                 providers: list[str] | None = None, spinning: bool = True):
        ort = require("onnxruntime", "running exported models", "onnx")
        self.directory = Path(directory)
        from .export_format import read_config

        meta = read_config(self.directory, "onnx")  # every field checked: a string "false" is not False
        self.meta = meta
        self.cfg = ModelConfig.from_dict(meta["model"])
        self.normalized = bool(meta.get("normalized"))
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sessions = {}
        for name, graph in meta["graphs"].items():
            path = self.directory / graph["file"]
            if not path.is_file():
                raise ValueError(f"{self.directory}: {graph['file']} is missing")
            self.sessions[name] = ort.InferenceSession(str(path), options,
                                                       providers=providers or ["CPUExecutionProvider"])
        from .config import TOKENIZER_FILES

        own = any((self.directory / name).is_file() for name in TOKENIZER_FILES)
        self.tokenizer_files = self.directory if own else None
        self._transform = None
        self._tokenizer = None

    # --------------------------------------------------------------------------------------- numpy in, out

    def encode_image(self, pixels: np.ndarray, normalize: bool = False) -> np.ndarray:
        if "image" not in self.sessions:
            raise ValueError(f"{self.cfg.name}: the export has no image tower")
        x = np.ascontiguousarray(pixels, dtype=np.float32)
        size, patch = self.cfg.vision.image_size, self.cfg.vision.patch_size
        if self.meta.get("dynamic_size"):
            if x.ndim != 4 or x.shape[1] != 3 or min(x.shape[2:]) < 2 * patch:
                raise ValueError(f"pixels must be (B, 3, H, W) with H, W >= {2 * patch}, got {tuple(x.shape)}")
        elif x.ndim != 4 or x.shape[1:] != (3, size, size):
            raise ValueError(f"pixels must be (B, 3, {size}, {size}), got {tuple(x.shape)} (an export with "
                             "--dynamic-size takes other sizes)")
        out = self.sessions["image"].run(None, {"pixels": x})[0]
        return _normalize(out) if normalize and not self.normalized else out

    def encode_text(self, ids: np.ndarray, normalize: bool = False) -> np.ndarray:
        """ids (B, L) int64. Under a causal mask the padding after each row's pooled token changes nothing, so
        the batch is cut after its longest one, as the PyTorch tower does."""
        if "text" not in self.sessions:
            raise ValueError(f"{self.cfg.name}: the export has no text tower")
        ids = np.asarray(ids, dtype=np.int64)
        cfg = self.cfg.text
        if ids.ndim != 2 or not 1 <= ids.shape[1] <= cfg.context_length:
            raise ValueError(f"token ids must be (B, L) with L <= {cfg.context_length}, got {tuple(ids.shape)}")
        if cfg.pool == "eot":
            is_eot = ids == cfg.eot_id
            missing = np.flatnonzero(~is_eot.any(axis=1))
            if missing.size:
                raise ValueError(f"text rows {missing.tolist()} have no end-of-text token (id {cfg.eot_id})")
            at = is_eot.argmax(axis=1)
        elif cfg.pool == "argmax":
            at = ids.argmax(axis=1)
        elif cfg.pool == "last":
            at = np.full(len(ids), ids.shape[1] - 1)
        else:
            at = np.zeros(len(ids), dtype=np.int64)
        if cfg.causal and len(ids):
            ids = ids[:, : int(at.max()) + 1]
        out = self.sessions["text"].run(None, {"ids": np.ascontiguousarray(ids)})[0]
        return _normalize(out) if normalize and not self.normalized else out

    # ------------------------------------------------------------------------------------ images and texts

    @property
    def transform(self):
        if self._transform is None:
            from .images import ImageTransform

            self._transform = ImageTransform(self.cfg.preprocess)
        return self._transform

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from .tokenizer import get_tokenizer

            self._tokenizer = get_tokenizer(self)
        return self._tokenizer

    def embed_images(self, images, batch_size: int = 32) -> np.ndarray:
        """(N, E), L2-normalised, from PIL images (any mode: each model's own RGB rule applies)."""
        out = [self.encode_image(np.stack([self.transform.array(im) for im in images[i: i + batch_size]]), True)
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.cfg.embed_dim), np.float32)

    def embed_texts(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        out = [self.encode_text(self.tokenizer.numpy(texts[i: i + batch_size]), True)
               for i in range(0, len(texts), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.cfg.embed_dim), np.float32)


class OnnxClassifier:
    """Zero-shot classification on ONNX Runtime, as `dualtower.eval.ZeroShotClassifier` does it on PyTorch: per
    label the mean of its normalised template embeddings, renormalised; softmax of the scaled cosines."""

    def __init__(self, model: OnnxModel, labels: list[str], templates: list[str]):
        from .eval.templates import fill

        if len(labels) < 2:
            raise ValueError(f"zero-shot classification needs at least two labels, got {labels}")
        scale = model.meta.get("logit_scale")
        if scale is None:
            raise ValueError(f"{model.directory}: the export has no logit scale (a one-tower model)")
        self.model, self.labels, self.scale = model, list(labels), float(scale)
        texts = model.embed_texts([fill(t, name) for name in self.labels for t in templates])
        self.classifier = _normalize(texts.reshape(len(self.labels), len(templates), -1).mean(axis=1))

    def probs(self, images: list) -> np.ndarray:
        logits = self.scale * self.model.embed_images(images) @ self.classifier.T
        logits = np.exp(logits - logits.max(axis=1, keepdims=True))
        return logits / logits.sum(axis=1, keepdims=True)

    def top(self, image, k: int = 3) -> list[tuple[str, float]]:
        probs = self.probs([image])[0]
        order = np.argsort(-probs, kind="stable")[: min(k, len(self.labels))]
        return [(self.labels[i], float(probs[i])) for i in order]


def embed_source(model: OnnxModel, source, batch_size: int = 64, with_text: bool = False):
    """Every readable record of a data source (bad ones skipped and counted): (image embeddings, text embeddings
    or None, ids, captions, SkipStats). Decoding runs in this process: no torch, no loader workers."""
    from .data import BadSample, SkipStats

    stats, feats, texts, ids, captions = SkipStats(), [], [], [], []
    for start in range(0, len(source), batch_size):
        images, skips = [], []
        for i in range(start, min(start + batch_size, len(source))):
            try:
                sample = source.load(i)
            except BadSample as e:
                skips.append((e.reason, e.detail or source.sample_id(i)))
                continue
            images.append(sample.image)
            ids.append(sample.id)
            captions.append(sample.caption)
        stats.add(len(images), skips)
        if images:
            feats.append(model.embed_images(images))
            if with_text:
                texts.append(model.embed_texts(captions[-len(images):]))
    dim = model.cfg.embed_dim
    image = np.concatenate(feats) if feats else np.zeros((0, dim), np.float32)
    text = (np.concatenate(texts) if texts else np.zeros((0, dim), np.float32)) if with_text else None
    return image, text, ids, captions, stats


def _normalize(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def load(directory: "str | os.PathLike", threads: int | None = None, providers: list[str] | None = None,
         spinning: bool = True) -> OnnxModel:
    return OnnxModel(directory, threads, providers, spinning)
