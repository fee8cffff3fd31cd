"""Embeddings of whole sources and lists of texts as torch tensors, for the metrics (`sources` and the runtimes'
shared `embed_texts` do the work)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..data import SkipStats, Source
from ..runtimes import as_embedder
from ..runtimes import length_batches as _length_batches
from . import sources


@dataclass
class ImageEmbeddings:
    features: torch.Tensor  # (N, E), L2-normalised
    labels: torch.Tensor  # (N,)
    ids: list[str]
    captions: list[str]
    image_keys: list[str]
    stats: SkipStats = field(default_factory=SkipStats)


def embed_source(model, source: Source, batch_size: int = 64, workers: int = 2, progress: bool = False,
                 with_text: bool = False) -> tuple[ImageEmbeddings, torch.Tensor | None]:
    """Image embeddings of every readable record (bad ones skipped and counted), and optionally of its captions.
    `model`: a DualEncoder or an Embedder of any runtime."""
    got = sources.embed_source(as_embedder(model), source, batch_size, workers, progress, with_text)
    images = ImageEmbeddings(torch.from_numpy(got.features), torch.from_numpy(got.labels), got.ids, got.captions,
                             got.image_keys, got.stats)
    return images, None if got.texts is None else torch.from_numpy(got.texts)


def length_batches(lengths: torch.Tensor, batch_size: int, token_budget: int) -> list[torch.Tensor]:
    """`runtimes.length_batches` on a tensor of lengths."""
    return [torch.from_numpy(b) for b in _length_batches(lengths.numpy(), batch_size, token_budget)]


def embed_texts(model, texts: list[str], batch_size: int = 256, token_budget: int | None = None) -> torch.Tensor:
    """(N, E) L2-normalised, batched by length (`Embedder.embed_texts`)."""
    return torch.from_numpy(as_embedder(model).embed_texts(texts, batch_size, token_budget))
