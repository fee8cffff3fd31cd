"""A model's own tokenizer from its `tokenizer.json` (SigLIP 2's Gemma vocabulary of 256,000 byte-fallback BPE
pieces), run by the `tokenizers` library, with the text handling of the model's reference:

- `clean` (ModelConfig.text_clean) is what happens to the text first: open_clip's cleaning functions
  ("canonicalize": ftfy, HTML entities, "_" to space, ASCII punctuation removed, lower case, whitespace
  collapsed, the rule of open_clip's SigLIP 2 configs and big_vision; "lower"; "whitespace"), or "hf-lowercase":
  the tokenizers Lowercase normaliser put in front of the file's own, as transformers' Siglip2Tokenizer does.
- The file's normaliser, BPE and post-processor make the ids (SigLIP 2's repos: no start token, `<eos>` at the
  end); the text is cut first to leave room for the post-processor's tokens, as transformers' truncation does.
- Padding to the context length (64) with the pad token's id from tokenizer_config.json (Gemma's `<pad>`, 0).

- SentencePiece kinds transformers rebuilds (`REBUILT`: XLM-R / XLM-V, T5 / mT5, named by tokenizer_config.json's
  tokenizer_class): transformers 5 takes only the file's pieces and its Precompiled charsmap and builds the rest
  itself (whitespace split, then Metaspace; its own template), so the file's other normalisers (the Replace of
  repeated spaces) never run there. Ours runs what transformers runs: on XLM-R-kind files the two pipelines give
  other ids for about one text in twenty (tabs, runs of spaces, text around special tokens).

Ids equal open_clip's HFTokenizer (which is transformers' AutoTokenizer) and transformers' tokenizer
(padding="max_length", truncation=True) on the same files; tested.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..config import TEXT_CLEANS
from ..errors import UserError
from .base import IdsTokenizer, check_texts
from .cleaning import CLEANS


# tokenizer_class -> the template transformers gives each text (start and end tokens by name)
REBUILT = {"XLMRobertaTokenizer": ("<s>", "</s>"), "T5Tokenizer": (None, "</s>"), "MT5Tokenizer": (None, "</s>")}


def _as_transformers_builds(tokenizer, tokenizer_class: str, source) -> None:
    """The file's pieces with transformers' own pipeline for `tokenizer_class` (see REBUILT)."""
    from tokenizers import normalizers, pre_tokenizers, processors

    state = json.loads(tokenizer.to_str())
    if (state.get("model") or {}).get("type") != "Unigram":
        raise UserError(f"{source}: a {tokenizer_class} file holds a Unigram model, this one a "
                        f"{(state.get('model') or {}).get('type')!r}")
    found = state.get("normalizer") or []
    found = found.get("normalizers", [found]) if isinstance(found, dict) else found
    charsmap = [n for n in found if isinstance(n, dict) and n.get("type") == "Precompiled"]
    tokenizer.normalizer = normalizers.Precompiled(
        __import__("base64").b64decode(charsmap[0]["precompiled_charsmap"])) if charsmap else None
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")])
    start, end = REBUILT[tokenizer_class]
    specials = {t: tokenizer.token_to_id(t) for t in (start, end) if t is not None}
    missing = [t for t, i in specials.items() if i is None]
    if missing:
        raise UserError(f"{source}: the vocabulary has no {', '.join(missing)} ({tokenizer_class} needs them)")
    single = " ".join(t for t in (start, "$A", end) if t is not None)
    pair = " ".join(t for t in (start, "$A", end, end if start else None, "$B", end) if t is not None)
    tokenizer.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                             special_tokens=list(specials.items()))


class JsonTokenizer(IdsTokenizer):
    def __init__(self, tokenizer_file: "str | Path", context_length: int, clean: str = "canonicalize",
                 pad: str = "<pad>", tokenizer_class: str | None = None):
        from tokenizers import Tokenizer, normalizers

        if clean not in TEXT_CLEANS:
            raise UserError(f"text clean {clean!r} is not one of {TEXT_CLEANS}")
        if context_length < 1:
            raise UserError(f"context_length must be at least 1, got {context_length}")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        if tokenizer_class in REBUILT:
            _as_transformers_builds(self.tokenizer, tokenizer_class, tokenizer_file)
        if clean == "hf-lowercase":
            own = self.tokenizer.normalizer
            self.tokenizer.normalizer = normalizers.Sequence([normalizers.Lowercase()] + ([own] if own else []))
        self.pad_id = self.tokenizer.token_to_id(pad)
        if self.pad_id is None:
            raise UserError(f"{tokenizer_file}: the vocabulary has no pad token {pad!r}")
        self.context_length, self.clean, self.pad = context_length, clean, pad

    @classmethod
    def from_directory(cls, directory: "str | Path", context_length: int, clean: str) -> "JsonTokenizer":
        directory = Path(directory)
        config = {}
        if (directory / "tokenizer_config.json").is_file():
            config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
        pad = config.get("pad_token") or "<pad>"  # a token is written as a string or as {"content": ...}
        pad = pad["content"] if isinstance(pad, dict) else pad
        return cls(directory / "tokenizer.json", context_length, clean, pad, config.get("tokenizer_class"))

    def encode(self, text: str) -> list[int]:
        """The ids of one cleaned text, without the file's special tokens or padding."""
        return self.tokenizer.encode(CLEANS[self.clean](text), add_special_tokens=False).ids

    def numpy(self, texts: "str | Sequence[str]", context_length: int | None = None) -> np.ndarray:
        texts = check_texts(texts)
        length = self.context_length if context_length is None else context_length
        if length < 1:
            raise UserError(f"context_length must be at least 1, got {length}")
        self.tokenizer.enable_truncation(max_length=length)  # leaves room for the post-processor's tokens
        self.tokenizer.enable_padding(length=length, pad_id=self.pad_id, pad_token=self.pad)
        encodings = self.tokenizer.encode_batch([CLEANS[self.clean](t) for t in texts])
        return np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(texts), length)

