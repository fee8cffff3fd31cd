"""What an evaluation returns: one dataclass per kind, its JSON (`to_dict`, the keys the results files have
always had) and the lines `dualtower eval` prints (`rows`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClassificationResult:
    """Zero-shot classification or a linear probe, scored on labelled images."""

    top1: float
    top5: float | None  # None where there are 5 classes or fewer (top-5 would be 1)
    mean_per_class_recall: float
    per_class_recall: dict[str, float]  # the classes with test images
    confusion: list[list[int]]  # rows: true class, columns: predicted
    classes: list[str]
    n: int
    templates: list[str] | None = None  # zero-shot: the prompt templates
    weight_decay: float | None = None  # linear probe: the one chosen on the validation split
    validation_top1: dict | None = None  # linear probe: weight decay -> validation top-1

    def to_dict(self) -> dict:
        out = {"top1": self.top1, **({"top5": self.top5} if self.top5 is not None else {}),
               "mean_per_class_recall": self.mean_per_class_recall, "per_class_recall": self.per_class_recall,
               "confusion": self.confusion, "classes": self.classes, "n": self.n}
        if self.templates is not None:
            out["templates"] = self.templates
        if self.weight_decay is not None:
            out.update(weight_decay=self.weight_decay, validation_top1=self.validation_top1)
        return out

    def rows(self) -> list[tuple[str, float]]:
        rows = [("top-1", self.top1), *([("top-5", self.top5)] if self.top5 is not None else []),
                ("mean per-class recall", self.mean_per_class_recall)]
        return rows + ([("weight decay", self.weight_decay)] if self.weight_decay is not None else [])


@dataclass(frozen=True)
class RetrievalResult:
    image_to_text: dict[str, float]  # "R@1" -> recall
    text_to_image: dict[str, float]
    n_images: int
    n_texts: int
    match: str = "caption"  # the rule: "caption" (a text matches the images it captions) or "class"

    RULES = {"caption": "a text matches the images it is a caption of",
             "class": "a text matches every image of the class it names (each prompt template per class)"}

    def to_dict(self) -> dict:
        return {"image_to_text": self.image_to_text, "text_to_image": self.text_to_image, "n_images": self.n_images,
                "n_texts": self.n_texts, "match": self.match}

    def rows(self) -> list[tuple[str, float]]:
        return [(f"image->text {k}", v) for k, v in self.image_to_text.items()] + \
               [(f"text->image {k}", v) for k, v in self.text_to_image.items()]

    @property
    def mean_r1(self) -> float:
        return (self.image_to_text["R@1"] + self.text_to_image["R@1"]) / 2
