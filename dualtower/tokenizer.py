"""The CLIP byte-level BPE tokenizer (Radford et al. 2021), ids identical to OpenAI's and open_clip's.

Text cleaning (ftfy, HTML unescape twice, whitespace collapse, lower case) and the word split are done with the
same libraries and pattern as the reference, so every input splits into the same words; the byte-level BPE of
the words runs in the Rust `tokenizers` library, in batches. The vocabulary file is OpenAI's
`bpe_simple_vocab_16e6.txt.gz` (MIT; see assets/NOTICE).
"""

from __future__ import annotations

import gzip
import html
import itertools
import json
import re
from functools import lru_cache
from importlib import resources
from typing import Sequence

import numpy as np
import torch

SOT = "<start_of_text>"
EOT = "<end_of_text>"
# The word split of OpenAI's CLIP: the special tokens, English contractions, runs of letters, single digits,
# runs of anything else that is not whitespace. Whitespace separates words and is dropped.
WORD_PATTERN = SOT + "|" + EOT + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
NUM_MERGES = 49152 - 256 - 2  # the published vocabulary uses the first 48,894 merges of the file

# The fast path. Text of printable ASCII, tabs and newlines, without "&" (HTML entities) and "<" (the special
# tokens), is left unchanged by ftfy and HTML unescaping, and on ASCII the word pattern's classes are plain
# ASCII classes: such text is lower-cased and split with the ASCII pattern (whitespace runs drop out of the
# split, so they need no collapsing), and each distinct word is BPE-encoded once (Rust, batched) and cached.
# Everything else takes the reference's own cleaning and split.
_PLAIN = re.compile(r"[\t\n\x20-\x25\x27-\x3b\x3d-\x7e]*")
ASCII_WORD_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[A-Za-z]+|[0-9]|[^\sA-Za-z0-9]+"""


@lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, so BPE never sees whitespace or controls."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    chars = printable + [256 + i for i in range(len(extra))]
    return dict(zip(printable + extra, map(chr, chars)))


def clean_text(text: str) -> str:
    """ftfy's repairs, HTML entities unescaped twice, whitespace runs collapsed, lower case."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


class ClipTokenizer:
    """Strings -> (B, context_length) LongTensor: start token, BPE ids, end token, zero padding.

    Text longer than the context is truncated with the end token kept in the last slot.
    """

    def __init__(self, context_length: int = 77, vocab_path: str | None = None):
        import regex
        from tokenizers import Tokenizer, models, pre_tokenizers

        if context_length < 2:
            raise ValueError(f"context_length must be at least 2 (start and end tokens), got {context_length}")
        self.context_length = context_length
        merges = _read_merges(vocab_path)
        units = list(bytes_to_unicode().values())
        vocab = units + [u + "</w>" for u in units] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = vocab
        self.sot_id, self.eot_id = self.encoder[SOT], self.encoder[EOT]
        self.merges = merges
        self.vocab_size = len(vocab)

        bpe = models.BPE(vocab=self.encoder, merges=merges, end_of_word_suffix="</w>", continuing_subword_prefix="")
        self._rust = Tokenizer(bpe)
        self._rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        self._rust.add_special_tokens([SOT, EOT])
        self._words = regex.compile(WORD_PATTERN, regex.IGNORECASE)
        self._ascii_words = re.compile(ASCII_WORD_PATTERN)
        self._word_ids: dict[str, list[int]] = {}  # BPE ids of each plain word seen, filled in batches

    def words(self, text: str) -> list[str]:
        return self._words.findall(clean_text(text))

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text, without start and end tokens and without truncation."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in texts]
        plain = [i for i, t in enumerate(texts) if _PLAIN.fullmatch(t)]
        words = [self._ascii_words.findall(texts[i].lower()) for i in plain]
        cache = self._word_ids
        if len(cache) > 1_000_000:
            cache.clear()
        new = list({w for ws in words for w in ws if w not in cache})
        for word, enc in zip(new, self._rust.encode_batch([[w] for w in new], is_pretokenized=True,
                                                          add_special_tokens=False)):
            cache[word] = enc.ids
        for i, ws in zip(plain, words):
            out[i] = [t for w in ws for t in cache[w]]
        plain_set = set(plain)
        other = [(i, w) for i, t in enumerate(texts) if i not in plain_set and (w := self.words(t))]
        encodings = self._rust.encode_batch([w for _, w in other], is_pretokenized=True, add_special_tokens=False)
        for (i, _), enc in zip(other, encodings):
            out[i] = enc.ids
        return out

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is {type(t).__name__}, not str")
        length = context_length or self.context_length
        if length < 2:
            raise ValueError(f"context_length must be at least 2 (start and end tokens), got {length}")
        ids = [x[: length - 2] for x in self.encode_batch(texts)]  # truncated: the end token keeps the last slot
        counts = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(counts.sum()))
        rows = np.repeat(np.arange(len(ids)), counts)
        cols = 1 + np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)
        result = np.zeros((len(texts), length), dtype=np.int64)
        result[:, 0] = self.sot_id
        result[rows, cols] = flat
        result[np.arange(len(ids)), counts + 1] = self.eot_id
        return torch.from_numpy(result)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of the ids up to the first end token (BPE does not keep case or whitespace runs)."""
        byte_of = {c: b for b, c in bytes_to_unicode().items()}
        out = bytearray()
        for i in ids:
            if i == self.eot_id:
                break
            if i == self.sot_id or not 0 <= i < self.vocab_size:
                continue
            token = self.decoder[i]
            word_end = token.endswith("</w>")
            out += bytes(byte_of[c] for c in token.removesuffix("</w>"))
            out += b" " if word_end else b""
        return out.decode("utf-8", errors="replace").strip()


    def hf_files(self) -> dict[str, str]:
        """vocab.json, merges.txt and tokenizer_config.json for transformers' CLIPTokenizer (its special-token
        spellings differ from OpenAI's; the ids are the same)."""
        hf_names = {SOT: "<|startoftext|>", EOT: "<|endoftext|>"}
        vocab = {hf_names.get(tok, tok): i for tok, i in self.encoder.items()}
        config = {
            "tokenizer_class": "CLIPTokenizer", "model_max_length": self.context_length, "do_lower_case": True,
            "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>", "errors": "replace",
        }
        return {
            "vocab.json": json.dumps(vocab, ensure_ascii=False),
            "merges.txt": "#version: 0.2\n" + "\n".join(" ".join(m) for m in self.merges) + "\n",
            "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
        }


def _read_merges(path: str | None) -> list[tuple[str, str]]:
    if path is None:
        data = resources.files("dualtower").joinpath("assets/bpe_simple_vocab_16e6.txt.gz").read_bytes()
    else:
        with open(path, "rb") as f:
            data = f.read()
    lines = gzip.decompress(data).decode("utf-8").split("\n")[1 : NUM_MERGES + 1]
    return [tuple(line.split()) for line in lines]


@lru_cache(maxsize=8)
def _tokenizer(context_length: int) -> ClipTokenizer:
    return ClipTokenizer(context_length)


def get_tokenizer(name_or_model="ViT-B-32") -> ClipTokenizer:
    """The tokenizer of an architecture name, a ModelConfig or a model (context length per architecture)."""
    from .archs import config_of

    cfg = config_of(name_or_model)
    if cfg.text is None:
        raise ValueError(f"{cfg.name} is a vision-only model: it has no text tower and no tokenizer")
    if cfg.tokenizer != "clip-bpe":
        raise ValueError(f"{cfg.name} uses its own tokenizer ({cfg.tokenizer}: not bundled with dualtower); "
                         "tokenize with it and pass token ids to encode_text")
    return _tokenizer(cfg.text.context_length)
