"""Embedding whole sources and lists of texts, in batches, with loader workers for image decoding."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..data import SkipStats, Source
from ..data.loader import SequentialPlan, batches
from ..images import eval_transform
from ..tokenizer import get_tokenizer


@dataclass
class ImageEmbeddings:
    features: torch.Tensor  # (N, E), L2-normalised
    labels: torch.Tensor  # (N,)
    ids: list[str]
    captions: list[str]
    image_keys: list[str]
    stats: SkipStats = field(default_factory=SkipStats)


@torch.inference_mode()
def embed_source(model, source: Source, batch_size: int = 64, workers: int = 2, progress: bool = False,
                 with_text: bool = False) -> tuple[ImageEmbeddings, torch.Tensor | None]:
    """Image embeddings of every readable record (bad ones skipped and counted), and optionally of its captions
    (only then is the model's tokenizer needed)."""
    model.eval()
    device = next(model.parameters()).device
    tokenizer = get_tokenizer(model) if with_text else None
    plan = SequentialPlan(len(source), batch_size)
    stream = batches(source, plan, eval_transform(model.cfg.preprocess), 0, plan.steps, workers)
    if progress:
        from tqdm import tqdm

        stream = tqdm(stream, total=plan.steps, desc="embed", unit="batch", dynamic_ncols=True)
    feats, texts, labels, ids, captions, keys, stats = [], [], [], [], [], [], SkipStats()
    for batch in stream:
        stats.add(len(batch), batch.skips)
        if not len(batch):
            continue
        feats.append(model.encode_image(batch.pixels.to(device), normalize=True).float().cpu())
        if with_text:
            tokens = tokenizer(batch.captions)  # the text tower moves them to its device
            texts.append(model.encode_text(tokens, normalize=True).float().cpu())
        labels.append(batch.labels)
        ids += batch.sample_ids
        captions += batch.captions
        keys += batch.image_keys
    dim = model.cfg.embed_dim
    out = ImageEmbeddings(torch.cat(feats) if feats else torch.zeros(0, dim),
                          torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long), ids, captions, keys,
                          stats)
    return out, (torch.cat(texts) if texts else torch.zeros(0, dim)) if with_text else None


def length_batches(lengths: torch.Tensor, batch_size: int, token_budget: int) -> list[torch.Tensor]:
    """Indices of `lengths` in batches, longest first: each batch has at most `batch_size` rows and at most
    `token_budget` padded tokens (rows x its longest length), so short texts share big batches and long ones
    do not pad a big batch to their length."""
    order = lengths.argsort(descending=True, stable=True)
    batches, start = [], 0
    while start < len(order):
        longest = int(lengths[order[start]])
        rows = max(1, min(batch_size, token_budget // max(longest, 1)))
        batches.append(order[start: start + rows])
        start += rows
    return batches


@torch.inference_mode()
def embed_texts(model, texts: list[str], batch_size: int = 256, token_budget: int | None = None) -> torch.Tensor:
    """(N, E) L2-normalised. Texts are encoded sorted by length in batches of at most `batch_size` texts and
    `token_budget` padded tokens (default: 8 per text of a full batch, 2,048 at 256), so each batch stops at
    its longest text and a few long texts do not pad many short ones. Under a causal mask the result is the
    same as one plain batch (tested); a bidirectional text tower gets plain batches."""
    model.eval()
    ids = get_tokenizer(model)(texts)
    out = torch.empty(len(texts), model.cfg.embed_dim)
    if model.cfg.text.causal:
        lengths = model.text.pool_positions(ids) + 1
        batches = length_batches(lengths, batch_size, token_budget or 8 * batch_size)
    else:  # every position counts: plain batches
        batches = [torch.arange(i, min(i + batch_size, len(texts))) for i in range(0, len(texts), batch_size)]
    for chunk in batches:
        out[chunk] = model.encode_text(ids[chunk], normalize=True).float().cpu()  # moved by the tower
    return F.normalize(out, dim=-1)
