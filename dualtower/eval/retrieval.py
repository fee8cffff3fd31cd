"""Image-text retrieval recall@k both ways, with several captions per image (COCO-style).

Images are the distinct image keys; texts are the distinct caption strings. An image and a text match when the
text is one of that image's captions. With unique captions this is the usual definition (CLIP_benchmark's);
with captions shared by many images (class prompts) a query is right when it finds any matching item, where
counting duplicates separately would turn ties between identical texts into misses.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from .embed import ImageEmbeddings, embed_texts
from .templates import fill
from .results import RetrievalResult


def recall_at_k(scores: torch.Tensor, positives: torch.Tensor, ks: tuple[int, ...]) -> dict[str, float]:
    """scores, positives: (queries, items); the fraction of queries with a positive in their top k."""
    ranked = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = positives.gather(1, ranked)  # (Q, kmax) bool
    return {f"R@{k}": int(hits[:, :k].any(dim=1).sum()) / len(hits) for k in ks}


def class_captions(images: ImageEmbeddings, classes: list[str], templates: list[str]) -> ImageEmbeddings:
    """The class-level rule: every prompt of an image's class (each template filled with the class name) as a
    caption of that image, so a text matches every image of the class it names."""
    per_image = len(templates)
    if (images.labels < 0).any():
        raise UserError("the class-level retrieval rule needs labelled data (a source with classes)")
    return ImageEmbeddings(
        features=images.features.repeat_interleave(per_image, dim=0),
        labels=images.labels.repeat_interleave(per_image),
        ids=[i for i in images.ids for _ in range(per_image)],
        captions=[fill(t, classes[int(c)]) for c in images.labels for t in templates],
        image_keys=[k for k in images.image_keys for _ in range(per_image)],
        stats=images.stats,
    )


def retrieval(model, images: ImageEmbeddings, ks: tuple[int, ...] = (1, 5, 10), match: str = "caption"
              ) -> RetrievalResult:
    """Recall@k both ways. `match` names the rule the captions follow, for the result to say: "caption" (each
    image's own captions), or "class" (`class_captions` made them)."""
    key_index: dict[str, int] = {}
    text_index: dict[str, int] = {}
    rows, pairs = [], []
    for i, (key, caption) in enumerate(zip(images.image_keys, images.captions)):
        if key not in key_index:
            key_index[key] = len(key_index)
            rows.append(i)
        pairs.append((key_index[key], text_index.setdefault(caption, len(text_index))))
    image_features = images.features[rows]  # (I, E)
    text_features = embed_texts(model, list(text_index))  # (T, E)
    positives = torch.zeros(len(key_index), len(text_index), dtype=torch.bool)
    for i, t in pairs:
        positives[i, t] = True
    scores = image_features @ text_features.T  # (I, T)
    return RetrievalResult(image_to_text=recall_at_k(scores, positives, ks),
                           text_to_image=recall_at_k(scores.T, positives.T, ks),
                           n_images=len(key_index), n_texts=len(text_index), match=match)
