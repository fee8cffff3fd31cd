"""The Embedder protocol: what every consumer (zero-shot, source embedding, index building, search, serving) needs
of a model, whatever runs it. What the runtimes share is written here once, in numpy: batching texts by length,
embedding lists of images and texts, the model's identity. Needs no torch."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from ..config import ModelConfig
from ..errors import UserError
from ..origin import Origin
from ..text_pool import pool_positions


class Embedder(ABC):
    """A model ready to embed: its config, its origin, and embeddings as (N, E) float32 numpy arrays, L2-normalised.

    A runtime implements `transform` (a picklable PIL image -> sample callable, run in decoding workers, which
    also batches its samples), `embed_pixels`, `embed_ids`, `weights_sha256` and `logit_scale`; it may
    override `map` (how records are decoded in parallel). Everything else is shared."""

    runtime: str = ""
    transform = None  # PIL image -> sample; set by each runtime
    language: str | None = None  # NLLB's tokenizer: the language tag before each text (None: its default)

    def __init__(self, cfg: ModelConfig, origin: Origin):
        self.cfg, self.origin = cfg, origin
        self._tokenizer = None
        self._lock = threading.Lock()  # one batch at a time runs the model (queries arrive from many threads)

    # ------------------------------------------------------------------------ what a runtime implements

    def collate(self, samples: list):
        """A list of `transform` outputs -> the batch `embed_pixels` takes: each transform batches its own."""
        return self.transform.collate(samples)

    @abstractmethod
    def embed_pixels(self, batch) -> np.ndarray:
        """(B, E) float32, L2-normalised, of one collated batch."""

    @abstractmethod
    def embed_ids(self, ids: np.ndarray) -> np.ndarray:
        """(B, E) float32, L2-normalised, of token ids (B, L) int64 (checked with `text_pool.pool_positions`)."""

    @abstractmethod
    def weights_sha256(self) -> str | None:
        """The digest of the model's fp32 weights (what a search index records of its model)."""

    @property
    @abstractmethod
    def logit_scale(self) -> float | None:
        """The learned temperature, exp'd and clamped as the model applies it (None: a one-tower model)."""

    def map(self, dataset: Sequence, batch_size: int, workers: int) -> Iterable[list]:
        """Lists of `dataset[k]` in order, `batch_size` at a time, decoded ahead by `workers` threads (Pillow and
        numpy release the GIL); the PyTorch runtime uses loader processes instead."""
        return ThreadedBatches(dataset, batch_size, workers)

    # --------------------------------------------------------------------------------------------- shared

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from ..tokenizers import get_tokenizer

            self._tokenizer = get_tokenizer(self, self.language)
        return self._tokenizer

    def identity(self, source: str | None = None) -> dict:
        """What an index records of its model: name, config (as JSON holds it), fp32 weights digest, source."""
        import json

        config = json.loads(json.dumps(self.cfg.to_dict()))  # lists, not tuples
        return {"name": self.cfg.name, "config": config, "weights_sha256": self.weights_sha256(), "source": source}

    def embed_images(self, images: Sequence, batch_size: int = 32) -> np.ndarray:
        """(N, E) of PIL images (any mode: each model's own RGB rule applies)."""
        out = [self.embed_pixels(self.collate([self.transform(im) for im in images[i: i + batch_size]]))
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.cfg.embed_dim), np.float32)

    def embed_texts(self, texts: Sequence[str], batch_size: int = 256, token_budget: int | None = None) -> np.ndarray:
        """(N, E). Texts are encoded sorted by length in batches of at most `batch_size` texts and `token_budget`
        padded tokens (default: 8 per text of a full batch, 2,048 at 256), so each batch stops at its longest
        text and a few long texts do not pad many short ones. Under a causal mask the result is the same as one
        plain batch (tested); a bidirectional text tower gets plain batches."""
        if self.cfg.text is None:
            raise UserError(f"{self.cfg.name} is a vision-only model: it has no text tower")
        texts = list(texts)
        out = np.zeros((len(texts), self.cfg.embed_dim), np.float32)
        if not texts:
            return out
        ids = self.tokenizer.numpy(texts)
        if self.cfg.text.causal:
            lengths = pool_positions(ids, self.cfg.text) + 1
            chunks = length_batches(lengths, batch_size, token_budget or 8 * batch_size)
        else:  # every position counts: plain batches
            chunks = [np.arange(i, min(i + batch_size, len(texts))) for i in range(0, len(texts), batch_size)]
        for chunk in chunks:
            out[chunk] = self.embed_ids(ids[chunk])
        return out


def length_batches(lengths: np.ndarray, batch_size: int, token_budget: int) -> list[np.ndarray]:
    """Indices of `lengths` in batches, longest first: each batch has at most `batch_size` rows and at most
    `token_budget` padded tokens (rows x its longest length), so short texts share big batches and long ones
    do not pad a big batch to their length."""
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = int(lengths[order[start]])
        rows = max(1, min(batch_size, token_budget // max(longest, 1)))
        batches.append(order[start: start + rows])
        start += rows
    return batches


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, in float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class ThreadedBatches:
    """Lists of dataset items decoded by a thread pool, the next batch decoding while the current one is used."""

    def __init__(self, dataset: Sequence, batch_size: int, workers: int):
        self.dataset, self.batch_size, self.workers = dataset, batch_size, max(1, workers)

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self) -> Iterator[list]:
        from concurrent.futures import ThreadPoolExecutor

        n = len(self.dataset)
        starts = range(0, n, self.batch_size)
        with ThreadPoolExecutor(self.workers) as pool:
            def submit(start):
                return [pool.submit(self.dataset.__getitem__, k) for k in range(start, min(start + self.batch_size, n))]

            pending = submit(starts[0]) if starts else []
            for i in range(len(starts)):
                current, pending = pending, submit(starts[i + 1]) if i + 1 < len(starts) else []
                yield [f.result() for f in current]
