"""Prompt templates ({c} stands for the class name, as in CLIP_benchmark's template files)."""

from __future__ import annotations

from pathlib import Path

# Wording never used by the built-in training captions (dualtower.data.builtin.TRAIN_TEMPLATES), so zero-shot
# numbers on held-out images measure new images *and* new wording (the classes themselves are not new).
HELD_OUT = {
    "digits": ["an image of the number {c}", "a blurry drawing of a {c}", "the number {c} in handwriting",
               "a tiny pixelated {c}"],
    "fashion-mnist": ["an image of a {c}", "a blurry picture of a {c}", "a piece of clothing: a {c}",
                      "a black and white picture of a {c}"],
}

# A general-purpose set (the short ensemble from OpenAI's CLIP ImageNet prompt engineering).
GENERIC = ["itap of a {c}.", "a bad photo of the {c}.", "a origami {c}.", "a photo of the large {c}.",
           "a {c} in a video game.", "art of the {c}.", "a photo of the small {c}."]


def fill(template: str, name: str) -> str:
    return template.format(c=name) if "{c}" in template else template.format(name)


def read_templates(path: str) -> list[str]:
    """One template per line ({c} or {} for the class name); blank lines and # comments skipped."""
    lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    templates = [ln for ln in lines if ln and not ln.startswith("#")]
    bad = [t for t in templates if "{c}" not in t and "{}" not in t]
    if not templates or bad:
        raise ValueError(f"{path}: every template needs {{c}} for the class name; bad: {bad[:3]}")
    return templates


def templates_for(source_name: str) -> list[str]:
    for key, templates in HELD_OUT.items():
        if source_name.startswith(key):
            return templates
    return GENERIC
