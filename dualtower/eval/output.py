"""Writing embeddings to disk: numpy .npz or .safetensors, with the ids of the samples (atomic)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_file


def write_embeddings(path: "str | Path", image_embeds: torch.Tensor, ids: list[str],
                     text_embeds: torch.Tensor | None = None, captions: list[str] | None = None) -> None:
    """`.npz`: arrays image_embeds (N, E) float32, ids (N,) str, and text_embeds / captions when given.
    `.safetensors`: tensors image_embeds (and text_embeds); metadata "ids" (and "captions") as JSON lists.
    Row i of every array belongs to ids[i]. Embeddings are L2-normalised."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        if path.suffix == ".npz":
            arrays = {"image_embeds": image_embeds.numpy().astype(np.float32), "ids": np.array(ids, dtype=str)}
            if text_embeds is not None:
                arrays["text_embeds"] = text_embeds.numpy().astype(np.float32)
                arrays["captions"] = np.array(captions, dtype=str)
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        elif path.suffix == ".safetensors":
            from safetensors.torch import save_file

            tensors = {"image_embeds": image_embeds.contiguous()}
            meta = {"ids": json.dumps(ids)}
            if text_embeds is not None:
                tensors["text_embeds"] = text_embeds.contiguous()
                meta["captions"] = json.dumps(captions)
            save_file(tensors, tmp, metadata=meta)
        else:
            raise ValueError(f"{path}: name the output .npz or .safetensors")
