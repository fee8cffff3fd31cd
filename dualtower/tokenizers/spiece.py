"""SigLIP's SentencePiece tokenizer, read from a repo's `spiece.model` with the `sentencepiece` library, with
the text handling transformers' `SiglipTokenizer` applies (ids equal on the same files; tested):

1. `▁` in the text becomes a space and one `▁` goes in front; the text is cut at the special tokens' spellings
   (`</s>`, `<unk>`), which stay whole and swallow the whitespace beside them.
2. Each piece between them is canonicalised as big_vision's prompt engineering does: lower-cased (when the
   repo's tokenizer_config says so, the default), ASCII punctuation removed, whitespace runs collapsed, stripped.
3. Each piece is encoded behind a `<unk>` prefix whose own pieces are then dropped (so SentencePiece's dummy
   prefix never lands on the text); a lone leading `▁` before a special token is dropped.
4. `</s>` ends the ids unless they already end with it; ids are cut to leave room for it, then padded with the
   pad id (`</s>` too) to the context length (64 for SigLIP).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from .base import IdsTokenizer, check_texts
from .cleaning import big_vision

SPIECE_UNDERLINE = "\u2581"


class SentencePieceTokenizer(IdsTokenizer):
    def __init__(self, model_file: "str | Path", context_length: int, lowercase: bool = True, eos: str = "</s>",
                 unk: str = "<unk>", pad: str = "</s>", extra_special: Sequence[str] = ()):
        try:
            import sentencepiece
        except ImportError as e:
            raise ImportError("SigLIP's tokenizer needs the sentencepiece library: pip install sentencepiece") from e
        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        self.context_length, self.lowercase, self.unk = context_length, lowercase, unk
        self.special = {token: self.sp.piece_to_id(token) for token in (eos, unk, pad, *extra_special)}
        self.eos_id, self.pad_id = self.special[eos], self.special[pad]
        self.unk_length = len(self.sp.encode(unk, out_type=str))
        self._split = re.compile("(" + "|".join(map(re.escape, sorted(self.special, key=len, reverse=True))) + ")")

    @classmethod
    def from_directory(cls, directory: "str | Path", context_length: int) -> "SentencePieceTokenizer":
        directory = Path(directory)
        config = {}
        if (directory / "tokenizer_config.json").is_file():
            config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))

        def spelling(value, default: str) -> str:  # a token is written as a string or as {"content": ...}
            value = value or default
            return value["content"] if isinstance(value, dict) else value

        extra = [spelling(t, "") for t in config.get("additional_special_tokens") or []]
        return cls(directory / "spiece.model", context_length, lowercase=config.get("do_lower_case", True),
                   eos=spelling(config.get("eos_token"), "</s>"), unk=spelling(config.get("unk_token"), "<unk>"),
                   pad=spelling(config.get("pad_token"), "</s>"), extra_special=[t for t in extra if t])

    def canonicalize(self, text: str) -> str:
        return big_vision(text, self.lowercase)

    def _pieces(self, text: str) -> list[str]:
        pieces = self.sp.encode(self.unk + self.canonicalize(text), out_type=str)
        return pieces[self.unk_length:] if len(pieces) >= self.unk_length else pieces

    def encode(self, text: str) -> list[int]:
        """The ids of one text, without the end token or padding."""
        parts = self._split.split(SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " "))
        for i in range(1, len(parts), 2):  # special tokens swallow the whitespace beside them
            parts[i - 1], parts[i + 1] = parts[i - 1].rstrip(), parts[i + 1].lstrip()
        pieces: list[str] = []
        for i, part in enumerate(parts):
            if i % 2:
                pieces.append(part)
            elif part:
                pieces += self._pieces(part)
        if len(pieces) > 1 and pieces[0] == SPIECE_UNDERLINE and pieces[1] in self.special:
            pieces = pieces[1:]
        return [self.special[p] if p in self.special else self.sp.piece_to_id(p) for p in pieces]

    def numpy(self, texts: "str | Sequence[str]", context_length: int | None = None) -> np.ndarray:
        texts = check_texts(texts)
        length = self.context_length if context_length is None else context_length
        out = np.full((len(texts), length), self.pad_id, dtype=np.int64)
        for row, text in enumerate(texts):
            ids = self.encode(text)
            ids = ids[: max(0, length - 1)] if len(ids) + 1 > length else ids
            if not ids or ids[-1] != self.eos_id:
                ids.append(self.eos_id)
            out[row, : len(ids)] = ids[:length]
        return out
