"""Text cleaning, once for every tokenizer kind: the references' rules (OpenAI CLIP's, open_clip's and
big_vision's), by the names ModelConfig.text_clean and the tokenizers use."""

from __future__ import annotations

import html
import re
import string

_PUNCTUATION = str.maketrans("", "", string.punctuation)


def basic(text: str) -> str:
    """ftfy's repairs, HTML entities unescaped twice, stripped (the first step of OpenAI's and open_clip's)."""
    import ftfy

    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def whitespace(text: str) -> str:
    """`basic`, then whitespace runs collapsed to one space."""
    return " ".join(basic(text).split())


def clip(text: str) -> str:
    """OpenAI CLIP's cleaning: `whitespace`, then lower case (open_clip's "lower")."""
    return whitespace(text).lower()


def canonicalize(text: str) -> str:
    """open_clip's (and big_vision's) canonical form of a prompt: `basic`, "_" to space, ASCII punctuation
    removed, lower case, whitespace collapsed."""
    text = basic(text).replace("_", " ").translate(_PUNCTUATION).lower()
    return " ".join(text.split())


def big_vision(text: str, lowercase: bool = True) -> str:
    """SigLIP's SentencePiece rule (transformers' SiglipTokenizer): lower case where the repo says so, ASCII
    punctuation removed, whitespace runs collapsed, stripped; no ftfy."""
    if lowercase:
        text = text.lower()
    return re.sub(r"\s+", " ", text.translate(_PUNCTUATION)).strip()


# ModelConfig.text_clean -> the rule, for tokenizer.json tokenizers
CLEANS = {
    "canonicalize": canonicalize,
    "lower": clip,
    "whitespace": whitespace,
    "hf-lowercase": lambda text: text,  # lower-cased by the tokenizer's normaliser instead
    "none": lambda text: text,  # the tokenizer's normaliser only (transformers' tokenizers)
}
