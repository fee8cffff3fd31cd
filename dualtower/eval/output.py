"""Writing embeddings to disk: numpy .npz or .safetensors, with the ids of the samples (atomic)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io import atomic_file


def write_predictions(path: "str | Path", rows: list[dict]) -> None:
    """`rows`: {"image": path, "top": [{"label", "prob"}, ...]} per image. `.json`: that list; `.csv`: one row per
    (image, rank) with columns image, rank, label, prob."""
    import csv
    import io

    path = Path(path)
    if path.suffix == ".json":
        from ..io import write_json

        write_json(path, rows)
        return
    if path.suffix != ".csv":
        raise UserError(f"{path}: name the output .json or .csv")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", "rank", "label", "prob"])
    for row in rows:
        for rank, item in enumerate(row["top"], 1):
            writer.writerow([row["image"], rank, item["label"], f"{item['prob']:.6f}"])
    with atomic_file(path) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")


def write_embeddings(path: "str | Path", image_embeds, ids: list[str], text_embeds=None,
                     captions: list[str] | None = None) -> None:
    """`.npz`: arrays image_embeds (N, E) float32, ids (N,) str, and text_embeds / captions when given.
    `.safetensors`: tensors image_embeds (and text_embeds); metadata "ids" (and "captions") as JSON lists.
    Row i of every array belongs to ids[i]. Embeddings are L2-normalised. They may be numpy arrays or CPU
    tensors."""
    image_embeds = np.ascontiguousarray(image_embeds, dtype=np.float32)
    if text_embeds is not None:
        text_embeds = np.ascontiguousarray(text_embeds, dtype=np.float32)
    for name, arr in (("image", image_embeds), ("text", text_embeds)):
        if arr is not None and not np.isfinite(arr).all():
            rows = np.flatnonzero(~np.isfinite(arr).all(axis=1))
            raise UserError(f"{path}: not written: {len(rows)} {name} embedding(s) hold NaN or infinite values "
                             f"(first ids: {[ids[i] for i in rows[:3]]}); the model's weights or inputs are broken")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        if path.suffix == ".npz":
            arrays = {"image_embeds": image_embeds, "ids": np.array(ids, dtype=str)}
            if text_embeds is not None:
                arrays["text_embeds"] = text_embeds
                arrays["captions"] = np.array(captions, dtype=str)
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        elif path.suffix == ".safetensors":
            from safetensors.numpy import save_file

            tensors = {"image_embeds": image_embeds}
            meta = {"ids": json.dumps(ids)}
            if text_embeds is not None:
                tensors["text_embeds"] = text_embeds
                meta["captions"] = json.dumps(captions)
            save_file(tensors, tmp, metadata=meta)
        else:
            raise UserError(f"{path}: name the output .npz or .safetensors")
