"""Embedding every readable record of a data source with any runtime (no torch): bad records skipped and counted."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..data.base import BadSample, SkipStats


@dataclass
class SourceEmbeddings:
    features: np.ndarray  # (N, E) float32, L2-normalised
    labels: np.ndarray  # (N,) int64, -1 where the source has no classes
    ids: list[str]
    captions: list[str]
    image_keys: list[str]  # equal keys: the same image
    stats: SkipStats = field(default_factory=SkipStats)
    texts: np.ndarray | None = None  # (N, E) of the captions, when asked for


class SourceRecords:
    """Item k: record k of `source` decoded and transformed, or the reason it is bad (a map-style dataset a
    runtime's `map` reads with threads or loader processes)."""

    def __init__(self, source, transform):
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, k: int) -> dict:
        try:
            sample = self.source.load(k)
            pixels = self.transform(sample.image)
        except BadSample as e:
            return {"bad": e.reason, "detail": e.detail or self.source.sample_id(k)}
        except Exception as e:  # one bad record must never stop a run: count it and go on
            return {"bad": "error", "detail": f"{self.source.sample_id(k)}: {type(e).__name__}: {e}"}
        return {"pixels": pixels, "id": sample.id, "caption": sample.caption, "label": sample.label,
                "image_key": sample.image_key}


def embed_source(embedder, source, batch_size: int = 64, workers: int = 2, progress: bool = False,
                 with_text: bool = False) -> SourceEmbeddings:
    """Image embeddings of every readable record, and optionally of its captions (only then is the model's
    tokenizer needed), in batches of `batch_size` decoded by `workers` (the runtime's threads or processes)."""
    stream = embedder.map(SourceRecords(source, embedder.transform), batch_size, workers)
    if progress:
        from tqdm import tqdm

        stream = tqdm(stream, total=len(stream), desc="embed", unit="batch", dynamic_ncols=True)
    out = SourceEmbeddings(np.zeros((0, embedder.cfg.embed_dim), np.float32), np.zeros(0, np.int64), [], [], [])
    features, texts, labels = [], [], []
    for records in stream:
        good = [r for r in records if "bad" not in r]
        out.stats.add(len(good), [(r["bad"], r["detail"]) for r in records if "bad" in r])
        if not good:
            continue
        features.append(embedder.embed_pixels(embedder.collate([r["pixels"] for r in good])))
        captions = [r["caption"] for r in good]
        if with_text:
            texts.append(embedder.embed_texts(captions))
        labels += [r["label"] for r in good]
        out.ids += [r["id"] for r in good]
        out.captions += captions
        out.image_keys += [r["image_key"] for r in good]
    if features:
        out.features, out.labels = np.concatenate(features), np.array(labels, dtype=np.int64)
    if with_text:
        out.texts = np.concatenate(texts) if texts else np.zeros((0, embedder.cfg.embed_dim), np.float32)
    return out
