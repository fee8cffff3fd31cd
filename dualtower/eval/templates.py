"""Prompt templates ({c} stands for the class name, as in CLIP_benchmark's template files)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

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


def check_template(template: str) -> str | None:
    """What is wrong with a template, or None: it must name the class once style, {c} or {}, and hold no other
    format field (a lone brace, {0}, {name})."""
    import string

    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        return f"{template!r}: {e}"
    if not fields:
        return f"{template!r}: no {{c}} for the class name"
    if set(fields) - {"c", ""}:
        return f"{template!r}: fields other than {{c}}: {sorted(set(fields) - {'c', ''})}"
    if len(set(fields)) > 1:
        return f"{template!r}: mixes {{c}} and {{}}; use one"
    return None


def read_templates(path: str) -> list[str]:
    """One template per line ({c} or {} for the class name); blank lines and # comments skipped."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{path}: {'a directory, not a file' if file.is_dir() else 'no such file'} of templates")
    try:
        lines = [ln.strip() for ln in file.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e})") from e
    templates = [ln for ln in lines if ln and not ln.startswith("#")]
    if not templates:
        raise UserError(f"{path}: no templates (one per line, {{c}} for the class name)")
    bad = [problem for t in templates if (problem := check_template(t))]
    if bad:
        raise UserError(f"{path}: {len(bad)} bad template(s): {'; '.join(bad[:3])}")
    return templates


def templates_for(source_name: str) -> list[str]:
    for key, templates in HELD_OUT.items():
        if source_name.startswith(key):
            return templates
    return GENERIC
