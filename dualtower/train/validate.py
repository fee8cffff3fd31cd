"""Validation during training: zero-shot classification or image-text retrieval on held-out data, with the
evaluation code of `dualtower eval`. Everything that can be refused (the data, the templates, the metric's name)
is checked when the run starts, not at its first evaluation."""

from __future__ import annotations

import torch

from ..data import open_source
from ..errors import UserError
from ..eval import embed_source, retrieval, zeroshot
from ..eval.templates import read_templates, templates_for

ZEROSHOT_METRICS = ("top1", "top5", "mean_per_class_recall")
RETRIEVAL_METRICS = tuple(f"{way}/R@{k}" for way in ("image_to_text", "text_to_image") for k in (1, 5, 10)) + \
    ("mean_R@1",)


class Validation:
    def __init__(self, val, data, workers: int):
        self.source = open_source(val.data, data.image_key, data.caption_key)
        self.task = val.task if val.task != "auto" else ("zeroshot" if self.source.classes else "retrieval")
        if self.task == "zeroshot" and not self.source.classes:
            raise UserError(f"val.data {val.data}: zero-shot validation needs data with classes")
        self.templates = (read_templates(val.templates) if val.templates else templates_for(self.source.name)) \
            if self.task == "zeroshot" else None
        known = ZEROSHOT_METRICS if self.task == "zeroshot" else RETRIEVAL_METRICS
        self.metric = val.metric if val.metric != "auto" else known[0] if self.task == "zeroshot" else "mean_R@1"
        if self.metric not in known:
            raise UserError(f"val.metric {self.metric!r} is not a {self.task} metric: {', '.join(known)}")
        self.batch_size, self.workers = val.batch_size, workers

    def __call__(self, model) -> dict[str, float]:
        """The metrics, flat ("top1", "image_to_text/R@1", ...); the model is left in training mode."""
        model.eval()
        try:
            with torch.no_grad():
                images, _ = embed_source(model, self.source, self.batch_size, self.workers)
                if self.task == "zeroshot":
                    result = zeroshot(model, images, self.source.classes, self.templates)
                    metrics = {k: v for k, v in result.to_dict().items() if k in ZEROSHOT_METRICS}
                else:
                    result = retrieval(model, images)
                    metrics = {f"{way}/{k}": v for way, recalls in (("image_to_text", result.image_to_text),
                                                                    ("text_to_image", result.text_to_image))
                               for k, v in recalls.items()}
                    metrics["mean_R@1"] = result.mean_r1
        finally:
            model.train()
        return metrics
