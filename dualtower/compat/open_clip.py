"""open_clip's model interface over a DualEncoder, for code written against open_clip (open_clip_train's zero-shot
evaluation, `open_clip.build_zero_shot_classifier`):

    model = dualtower.compat.open_clip.OpenClipModel(dualtower.load(...))
    model(image=pixels)               -> {"image_features", "text_features": None, "logit_scale"[, "logit_bias"]}
    model(image=pixels, text=ids)     -> both features, normalised
    model.encode_image(pixels, normalize=True), model.encode_text(ids, normalize=True)

The DualEncoder itself has one return type (`DualEncoderOutput`); this wrapper is the one place open_clip's dict
output lives."""

from __future__ import annotations

import torch
from torch import nn


class OpenClipModel(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    @property
    def logit_scale(self) -> torch.Tensor | None:
        return self.model.logit_scale

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.model.encode_image(image, normalize=normalize)

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.model.encode_text(text, normalize=normalize)

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor | None]:
        """open_clip's dict output: normalised "image_features" / "text_features" (None for a tower not asked),
        "logit_scale" (exp'd and clamped) and, where the model has one, "logit_bias"."""
        m = self.model
        out = {"image_features": None if image is None else m.encode_image(image, normalize=True),
               "text_features": None if text is None else m.encode_text(text, normalize=True),
               "logit_scale": None if m.logit_scale is None else m.scale()}
        if m.logit_bias is not None:
            out["logit_bias"] = m.logit_bias
        return out
