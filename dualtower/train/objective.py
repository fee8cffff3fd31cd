"""The run's loss, decided once from the config: a named callable with named arguments."""

from __future__ import annotations

import torch

from ..chunked_losses import chunked_clip_loss, chunked_siglip_loss
from ..errors import UserError
from ..losses import clip_loss, siglip_loss


class ContrastiveLoss:
    """`loss(image, text, all_image, all_text, offset)`: this process's embeddings (local rows) against every
    process's (global columns, this process's rows starting at `offset`), with the model's scale (and bias)."""

    def __init__(self, model, kind: str, label_smoothing: float = 0.0, chunk: int = 0):
        if kind not in ("clip", "siglip"):
            raise UserError(f"train.loss {kind!r} is not clip or siglip")
        self.model, self.kind, self.label_smoothing, self.chunk = model, kind, label_smoothing, chunk

    def __call__(self, image: torch.Tensor, text: torch.Tensor, all_image: torch.Tensor, all_text: torch.Tensor,
                 offset: int) -> torch.Tensor:
        scale = self.model.scale()
        if self.kind == "clip" and self.chunk:
            return chunked_clip_loss(image, text, scale, all_image, all_text, offset, self.label_smoothing,
                                     self.chunk)
        if self.kind == "clip":
            return clip_loss(image, text, scale, all_image, all_text, offset, self.label_smoothing)
        bias = self.model.logit_bias
        if self.chunk:
            return chunked_siglip_loss(image, text, scale, bias, all_text, offset, self.chunk)
        return siglip_loss(image, text, scale, bias, all_text, offset)
