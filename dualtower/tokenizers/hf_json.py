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
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..config import TEXT_CLEANS
from ..errors import UserError
from .base import IdsTokenizer, check_texts
from .cleaning import CLEANS


LANGUAGE = "{language}"  # stands for the tokenizer's language tag in a template (NLLB's eng_Latn, ...)


@dataclass(frozen=True)
class Rebuilt:
    """How transformers 5 rebuilds a tokenizer class from a file: only the file's pieces (and merges) and its
    Precompiled charsmap are kept; the rest is the class's own."""

    model: str  # the file's model type the class takes (Unigram, BPE)
    start: str | None  # the token before each text (LANGUAGE: the language tag)
    end: str
    split_whitespace: bool  # a WhitespaceSplit before Metaspace (XLM-R, T5); else Metaspace alone (NLLB)
    replace_spaces: bool  # the charsmap followed by a Replace of runs of spaces (NLLB)


REBUILT = {
    "XLMRobertaTokenizer": Rebuilt("Unigram", "<s>", "</s>", split_whitespace=True, replace_spaces=False),
    "T5Tokenizer": Rebuilt("Unigram", None, "</s>", split_whitespace=True, replace_spaces=False),
    "MT5Tokenizer": Rebuilt("Unigram", None, "</s>", split_whitespace=True, replace_spaces=False),
    # NLLB (non-legacy, transformers' default): `lang_code text </s>`, the language a tokenizer option
    "NllbTokenizer": Rebuilt("BPE", LANGUAGE, "</s>", split_whitespace=False, replace_spaces=True),
}


def _as_transformers_builds(tokenizer, tokenizer_class: str, source, language: str | None) -> None:
    """The file's pieces with transformers' own pipeline for `tokenizer_class` (see REBUILT)."""
    import base64

    from tokenizers import Regex, normalizers, pre_tokenizers, processors

    rule = REBUILT[tokenizer_class]
    state = json.loads(tokenizer.to_str())
    kind = (state.get("model") or {}).get("type")
    if kind != rule.model:
        raise UserError(f"{source}: a {tokenizer_class} file holds a {rule.model} model, this one a {kind!r}")
    found = state.get("normalizer") or []
    found = found.get("normalizers", [found]) if isinstance(found, dict) else found
    charsmap = [n for n in found if isinstance(n, dict) and n.get("type") == "Precompiled"]
    steps = [normalizers.Precompiled(base64.b64decode(charsmap[0]["precompiled_charsmap"]))] if charsmap else []
    if steps and rule.replace_spaces:
        steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    tokenizer.normalizer = normalizers.Sequence(steps) if len(steps) > 1 else (steps[0] if steps else None)
    metaspace = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), metaspace]) \
        if rule.split_whitespace else metaspace
    start = (language or "eng_Latn") if rule.start == LANGUAGE else rule.start
    if language is not None and rule.start != LANGUAGE:
        raise UserError(f"{source}: a {tokenizer_class} has no language tag; language= is for NLLB's tokenizer")
    specials = {t: tokenizer.token_to_id(t) for t in (start, rule.end) if t is not None}
    missing = [t for t, i in specials.items() if i is None]
    if missing:
        what = "the language tag" if rule.start == LANGUAGE else "the special tokens"
        raise UserError(f"{source}: the vocabulary has no {', '.join(missing)} ({what} {tokenizer_class} needs)")
    single = " ".join(t for t in (start, "$A", rule.end) if t is not None)  # (texts are never encoded in pairs)
    tokenizer.post_processor = processors.TemplateProcessing(single=single, special_tokens=list(specials.items()))


class JsonTokenizer(IdsTokenizer):
    def __init__(self, tokenizer_file: "str | Path", context_length: int, clean: str = "canonicalize",
                 pad: str = "<pad>", tokenizer_class: str | None = None, language: str | None = None):
        from tokenizers import Tokenizer, normalizers

        if clean not in TEXT_CLEANS:
            raise UserError(f"text clean {clean!r} is not one of {TEXT_CLEANS}")
        if context_length < 1:
            raise UserError(f"context_length must be at least 1, got {context_length}")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        if tokenizer_class in REBUILT:
            _as_transformers_builds(self.tokenizer, tokenizer_class, tokenizer_file, language)
        elif language is not None:
            raise UserError(f"{tokenizer_file}: language= is for NLLB's tokenizer (NllbTokenizer), this one is "
                            f"{tokenizer_class or 'a plain tokenizer.json'}")
        if clean == "hf-lowercase":
            own = self.tokenizer.normalizer
            self.tokenizer.normalizer = normalizers.Sequence([normalizers.Lowercase()] + ([own] if own else []))
        self.pad_id = self.tokenizer.token_to_id(pad)
        if self.pad_id is None:
            raise UserError(f"{tokenizer_file}: the vocabulary has no pad token {pad!r}")
        self.context_length, self.clean, self.pad = context_length, clean, pad

    @classmethod
    def from_directory(cls, directory: "str | Path", context_length: int, clean: str,
                       language: str | None = None) -> "JsonTokenizer":
        directory = Path(directory)
        config = {}
        if (directory / "tokenizer_config.json").is_file():
            config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
        pad = config.get("pad_token") or "<pad>"  # a token is written as a string or as {"content": ...}
        pad = pad["content"] if isinstance(pad, dict) else pad
        kind = config.get("tokenizer_class")
        if language is None and kind == "NllbTokenizer":
            language = config.get("src_lang")  # the tokenizer's saved source language, if any
        return cls(directory / "tokenizer.json", context_length, clean, pad, kind, language)

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

