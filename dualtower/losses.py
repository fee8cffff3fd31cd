"""Contrastive losses: pure functions of tensors.

Both take this process's (local) normalised embeddings and, under several processes, the embeddings of all
processes gathered with gradient (`distributed.gather_features`), with `offset` the position of this process's
rows among them. Local rows are scored against global columns (open_clip's `local_loss`); averaging the
per-process gradients then equals the single-process loss on the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
              all_image: torch.Tensor | None = None, all_text: torch.Tensor | None = None, offset: int = 0,
              label_smoothing: float = 0.0) -> torch.Tensor:
    """Symmetric cross-entropy over scaled cosine similarities (CLIP, Radford et al. 2021).

    image, text: (b, E) local embeddings, L2-normalised; all_image, all_text: (B, E) from every process.
    """
    all_image = image if all_image is None else all_image
    all_text = text if all_text is None else all_text
    labels = torch.arange(offset, offset + image.shape[0], device=image.device)
    logits_per_image = logit_scale * image @ all_text.T  # (b, B)
    logits_per_text = logit_scale * text @ all_image.T  # (b, B)
    return (F.cross_entropy(logits_per_image, labels, label_smoothing=label_smoothing)
            + F.cross_entropy(logits_per_text, labels, label_smoothing=label_smoothing)) / 2


def siglip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor,
                all_text: torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
    """Pairwise sigmoid loss (SigLIP): every image-text pair is a binary positive/negative, summed over
    columns and averaged over rows. The matrix is symmetric in its pairs, so local images against all texts
    covers each pair exactly once across processes."""
    all_text = text if all_text is None else all_text
    logits = logit_scale * image @ all_text.T + logit_bias  # (b, B)
    signs = -torch.ones_like(logits)
    rows = torch.arange(image.shape[0], device=image.device)
    signs[rows, rows + offset] = 1.0
    return -F.logsigmoid(signs * logits).sum() / image.shape[0]
