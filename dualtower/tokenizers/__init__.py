"""Tokenizers: one base (`base.IdsTokenizer`), one text-cleaning module (`cleaning`), one module per kind
(`clip_bpe`: OpenAI's CLIP BPE, bundled; `spiece`: SigLIP's SentencePiece; `hf_json`: a tokenizer.json such as
SigLIP 2's Gemma), and `get_tokenizer` above them. A new kind is one module and one row of KINDS."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ..errors import UserError
from .base import IdsTokenizer
from .clip_bpe import ClipTokenizer

# a model's own tokenizer file -> how its kind is made from the model's folder, in the order they are tried
KINDS = {
    "spiece.model": lambda folder, cfg, language: _module("spiece").SentencePieceTokenizer.from_directory(
        folder, cfg.text.context_length),
    "tokenizer.json": lambda folder, cfg, language: _module("hf_json").JsonTokenizer.from_directory(
        folder, cfg.text.context_length, cfg.text_clean, language),
}


def _module(name: str):
    import importlib

    return importlib.import_module(f".{name}", __name__)


@lru_cache(maxsize=8)
def _clip(context_length: int) -> ClipTokenizer:
    return ClipTokenizer(context_length)


def get_tokenizer(name_or_model="ViT-B-32", language: str | None = None) -> IdsTokenizer:
    """The tokenizer of an architecture name, a ModelConfig, a model or an Embedder (context length per
    architecture). A model with its own tokenizer (SigLIP's SentencePiece, SigLIP 2's Gemma tokenizer.json,
    XLM-R's, mT5's, NLLB's) takes it from the folder its origin names (beside the weights, or the Hub snapshot).
    `language`: NLLB's language tag put before each text (eng_Latn, fra_Latn, zho_Hans, ...; default eng_Latn,
    or the src_lang its tokenizer_config.json saved), as transformers' src_lang; other kinds have none."""
    from ..archs import config_of

    cfg = config_of(name_or_model)
    if cfg.text is None:
        raise UserError(f"{cfg.name} is a vision-only model: it has no text tower and no tokenizer")
    if cfg.tokenizer == "clip-bpe":
        if language is not None:
            raise UserError(f"{cfg.name}: the CLIP BPE tokenizer has no language tag; language= is for NLLB's")
        return _clip(cfg.text.context_length)
    origin = getattr(name_or_model, "origin", None)  # a model's or an Embedder's (a name or config has none)
    folder: Path | None = origin.tokenizer_dir if origin is not None else None
    for file, make in KINDS.items():
        if folder is not None and (folder / file).is_file():
            if language is not None and file != "tokenizer.json":
                raise UserError(f"{cfg.name}: its {file} tokenizer has no language tag; language= is for NLLB's")
            return make(folder, cfg, language)
    raise UserError(f"{cfg.name} uses its own tokenizer, and neither spiece.model nor tokenizer.json came with it; "
                     "load the model from a directory or hub repo that has them, or tokenize with it yourself and "
                     "pass token ids to encode_text")


__all__ = ["KINDS", "ClipTokenizer", "IdsTokenizer", "get_tokenizer"]
