"""What every tokenizer kind shares: `numpy(texts, context_length)` gives (B, L) int64 ids, and calling one
gives them as a torch tensor (torch is imported only then)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch


class IdsTokenizer:
    def numpy(self, texts, context_length: int | None = None) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, texts: "str | Sequence[str]", context_length: int | None = None) -> "torch.Tensor":
        import torch

        return torch.from_numpy(self.numpy(texts, context_length))


def check_texts(texts: "str | Sequence[str]") -> list[str]:
    """`texts` as a list of strings (one string is one text); anything else is refused, naming its place."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not set(map(type, texts)) <= {str}:
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{row}] is {type(text).__name__}, not str")
    return texts
