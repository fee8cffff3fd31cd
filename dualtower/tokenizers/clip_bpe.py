"""The CLIP byte-level BPE tokenizer (Radford et al. 2021), ids identical to OpenAI's and open_clip's.

Text cleaning (ftfy, HTML unescape twice, whitespace collapse, lower case) and the word split are done with the
same libraries and pattern as the reference, so every input splits into the same words; the byte-level BPE of
new words runs in the Rust `tokenizers` library. A batch is handled as a whole: text that cleaning would not
change is only lower-cased, all texts are split at whitespace in one call, and the ids of each distinct chunk
(and word) are kept in flat arrays, so a batch of seen chunks costs a few dictionary lookups and array
operations per text. The vocabulary file is OpenAI's `bpe_simple_vocab_16e6.txt.gz` (MIT; see assets/NOTICE)."""

from __future__ import annotations

import bisect
import gzip
import itertools
import json
import re
import threading
from functools import lru_cache
from importlib import resources
from typing import Sequence

import numpy as np

from ..errors import UserError
from .base import IdsTokenizer, check_texts
from .cleaning import clip as clean_text

SOT = "<start_of_text>"
EOT = "<end_of_text>"
# The word split of OpenAI's CLIP: the special tokens, English contractions, runs of letters, single digits,
# runs of anything else that is not whitespace. Whitespace separates words and is dropped.
WORD_PATTERN = SOT + "|" + EOT + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
HF_SOT, HF_EOT = "<|startoftext|>", "<|endoftext|>"  # transformers' spellings of the same two tokens
NUM_MERGES = 49152 - 256 - 2  # the published vocabulary uses the first 48,894 merges of the file

# Text that cleaning provably leaves alone, up to case and whitespace: printable ASCII, tabs and newlines (ftfy
# changes none of these; a "\r" it would), with no "&" that could open an HTML entity (one followed by anything
# but whitespace or "&"). Such text needs only lower case; anything this finds takes the full cleaning. Either
# way the words are then split with the reference's own pattern (special tokens included).
_NEEDS_CLEANING = re.compile(r"[^\t\n\x20-\x7e]|&[^\t\n &]")
_PLAIN_BYTES = bytes([9, 10, *range(0x20, 0x7F)])
_MAY_NEED_CLEANING = re.compile(r"[^\t\n\x20-\x25\x27-\x7e]")  # its first characters, in one class
_SEPARATOR = "\n\x00\n"  # between texts in one split; a chunk of its own, as whitespace surrounds it
_CACHE_LIMIT = 250_000  # distinct chunks kept per process (up to about 70 MB); when full, it starts afresh


@lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, so BPE never sees whitespace or controls."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    chars = printable + [256 + i for i in range(len(extra))]
    return dict(zip(printable + extra, map(chr, chars)))


def _text_ends(ends: np.ndarray, rows: np.ndarray, expected: int) -> np.ndarray:
    """The running id totals at each separator (row 0): where each text ends."""
    at = ends[rows == 0]
    if len(at) != expected:  # cleaned text never holds U+0000, so this would be a bug, not bad input
        raise RuntimeError(f"tokenizer: found {len(at)} separators for {expected} texts")
    return at


class _IdTable:
    """Strings -> their token ids, all ids in one growing array (ragged rows), so that looking up many strings
    makes no Python object per string: with hundreds of thousands of objects alive (torch imported), making
    many sets off the garbage collector's full passes, which cost more than the lookups."""

    def __init__(self, empty: str):
        self.index: dict[str, int] = {empty: 0}  # row 0: a string with no ids (the separator)
        self.start = np.zeros(1024, dtype=np.int64)
        self.len = np.zeros(1024, dtype=np.int64)
        self.flat = np.zeros(4096, dtype=np.int64)
        self.used = 0

    def rows(self, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Each key's row, -1 where unknown; and the positions of the unknown ones."""
        rows = np.fromiter(map(self.index.get, keys, itertools.repeat(-1)), dtype=np.int64, count=len(keys))
        return rows, np.flatnonzero(rows < 0)

    def add(self, keys: list[str], ids: np.ndarray, lens: np.ndarray) -> None:
        first, n, size = len(self.index), len(keys), len(ids)
        if first + n > len(self.len):
            self.len = np.resize(self.len, max(2 * len(self.len), first + n))
            self.start = np.resize(self.start, len(self.len))
        if self.used + size > len(self.flat):
            self.flat = np.resize(self.flat, max(2 * len(self.flat), self.used + size))
        self.len[first : first + n] = lens
        self.start[first : first + n] = self.used + np.cumsum(lens) - lens
        self.flat[self.used : self.used + size] = ids
        self.used += size
        self.index.update(zip(keys, range(first, first + n)))

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ids of the rows, concatenated, and the running total of ids at the end of each row."""
        lens = self.len[rows]
        ends = np.cumsum(lens)
        total = int(ends[-1]) if len(ends) else 0
        return self.flat[np.arange(total) - np.repeat(ends - lens - self.start[rows], lens)], ends


class ClipTokenizer(IdsTokenizer):
    """Strings -> (B, context_length) LongTensor: start token, BPE ids, end token, zero padding.

    Text longer than the context is truncated with the end token kept in the last slot.
    """

    def __init__(self, context_length: int = 77, vocab_path: str | None = None):
        import regex
        from tokenizers import Tokenizer, models, pre_tokenizers

        if context_length < 2:
            raise UserError(f"context_length must be at least 2 (start and end tokens), got {context_length}")
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
        self._lock = threading.Lock()  # the cache below is shared by threads that tokenize at once
        self._clear_cache()

    _PER_PROCESS = ("_lock", "_chunks", "_words_seen")

    def __getstate__(self) -> dict:
        # Sent to loader worker processes without the lock and the cache: each process builds its own.
        return {k: v for k, v in self.__dict__.items() if k not in self._PER_PROCESS}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._clear_cache()

    def _clear_cache(self) -> None:
        # The ids of each distinct whitespace-separated chunk of cleaned text (a chunk's ids do not depend on
        # its neighbours: the word split never crosses whitespace), and of each distinct word.
        self._chunks = _IdTable(_SEPARATOR.strip())
        self._words_seen = _IdTable(_SEPARATOR.strip())

    def words(self, text: str) -> list[str]:
        return self._words.findall(clean_text(text))

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text, without start and end tokens and without truncation."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        flat, counts = self._encode_flat(texts)
        return [x.tolist() for x in np.split(flat, np.cumsum(counts)[:-1])] if len(texts) else []

    def _joined(self, texts: Sequence[str]) -> str:
        """All texts as the word split sees them (up to whitespace, which only separates words), each followed
        by the separator."""
        joined = "\n".join(texts)  # a newline can neither hide nor make a match across two texts
        if joined.isascii() and "&" not in joined and not joined.encode().translate(None, _PLAIN_BYTES):
            return (_SEPARATOR.join(texts) + _SEPARATOR).lower()  # nothing to clean: the common case
        out = [t.lower() for t in texts]
        found = _MAY_NEED_CLEANING.search(joined)
        ends = list(itertools.accumulate(len(t) + 1 for t in texts)) if found else []
        while found:
            at = found.start()
            if _NEEDS_CLEANING.match(joined, at):
                i = bisect.bisect_right(ends, at)
                out[i] = clean_text(texts[i])
                found = _MAY_NEED_CLEANING.search(joined, ends[i])
            else:
                found = _MAY_NEED_CLEANING.search(joined, at + 1)
        return _SEPARATOR.join(out) + _SEPARATOR

    def _encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """All texts' BPE ids in one array, and the number of ids of each text."""
        # One split of all texts, each followed by the separator chunk. Cleaned text never holds U+0000 (ftfy
        # removes it, HTML unescaping cannot make it, and text that has it is cleaned), so the separators
        # counted are exactly the texts' ends.
        chunks = self._joined(texts).split() if len(texts) else []
        with self._lock:
            if len(self._chunks.index) > _CACHE_LIMIT:
                self._clear_cache()
            rows, missing = self._chunks.rows(chunks)
            if missing.size:
                self._add_chunks(list(dict.fromkeys(map(chunks.__getitem__, missing.tolist()))))
                rows, _ = self._chunks.rows(chunks)
            flat, ends = self._chunks.gather(rows)
        return flat, np.diff(_text_ends(ends, rows, len(texts)), prepend=0)

    def _add_chunks(self, chunks: list[str]) -> None:
        # One word split of all the new chunks, each followed by the separator, and one call of the Rust BPE
        # for the words not seen before.
        words = self._words.findall(_SEPARATOR.join(chunks) + _SEPARATOR)
        rows, missing = self._words_seen.rows(words)
        if missing.size:
            new = list(dict.fromkeys(map(words.__getitem__, missing.tolist())))
            encoding = self._rust.encode(new, is_pretokenized=True, add_special_tokens=False)
            ids = np.array(encoding.ids, dtype=np.int64)
            self._words_seen.add(new, ids, np.bincount(np.array(encoding.word_ids, dtype=np.int64),
                                                       minlength=len(new)))
            rows, _ = self._words_seen.rows(words)
        flat, ends = self._words_seen.gather(rows)
        self._chunks.add(chunks, flat, np.diff(_text_ends(ends, rows, len(chunks)), prepend=0))

    def numpy(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """(B, L) int64 as a numpy array (what a runtime without torch feeds ONNX Runtime)."""
        texts = check_texts(texts)
        length = self.context_length if context_length is None else context_length
        if length < 2:
            raise UserError(f"context_length must be at least 2 (start and end tokens), got {length}")
        flat, counts = self._encode_flat(texts)
        starts = np.cumsum(counts) - counts
        # Each id's place in the flattened (B, length) result: its row's start, 1 for the start token, its column.
        place = np.arange(len(flat)) + np.repeat(np.arange(len(texts)) * length + 1 - starts, counts)
        result = np.zeros((len(texts), length), dtype=np.int64)
        result[:, 0] = self.sot_id
        if len(flat) and counts.max() > length - 2:  # truncated: the end token keeps the last slot
            keep = np.arange(len(flat)) - np.repeat(starts, counts) < length - 2
            place, flat = place[keep], flat[keep]
        result.reshape(-1)[place] = flat
        result[np.arange(len(texts)), np.minimum(counts, length - 2) + 1] = self.eot_id
        return result

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
        """transformers' CLIPTokenizer files (vocab.json, merges.txt, tokenizer_config.json,
        special_tokens_map.json) and a fast tokenizer.json, which the `tokenizers` library runs in any language
        without rebuilding CLIP's BPE. Their special-token spellings differ from OpenAI's; the ids are the same.
        They do not repair mojibake nor unescape HTML as OpenAI's cleaning does (ids equal on plain text)."""
        special = {"bos_token": HF_SOT, "eos_token": HF_EOT, "unk_token": HF_EOT, "pad_token": HF_EOT}
        config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": self.context_length, "do_lower_case": True,
                  **special, "errors": "replace"}
        return {
            "vocab.json": json.dumps(self._hf_vocab(), ensure_ascii=False),
            "merges.txt": "#version: 0.2\n" + "\n".join(" ".join(m) for m in self.merges) + "\n",
            "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
            "special_tokens_map.json": json.dumps(special, indent=2) + "\n",
            "tokenizer.json": self.fast_tokenizer_json(),
        }

    def _hf_vocab(self) -> dict[str, int]:
        return {{SOT: HF_SOT, EOT: HF_EOT}.get(tok, tok): i for tok, i in self.encoder.items()}

    def fast_tokenizer_json(self) -> str:
        """This vocabulary as one `tokenizers` pipeline: NFC, whitespace runs to one space, lower case; CLIP's word
        split; byte-level BPE with "</w>" ending each word; the start and end tokens around the ids (the
        pipeline transformers' CLIPTokenizerFast builds from vocab.json and merges.txt)."""
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

        fast = Tokenizer(models.BPE(vocab=self._hf_vocab(), merges=self.merges, continuing_subword_prefix="",
                                    end_of_word_suffix="</w>", fuse_unk=False, unk_token=HF_EOT))
        fast.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                                normalizers.Lowercase()])
        words = WORD_PATTERN.split("|", 2)[2]  # the word split without OpenAI's special-token spellings
        fast.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(words), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False)])
        fast.decoder = decoders.ByteLevel()
        fast.post_processor = processors.RobertaProcessing((HF_EOT, self.eot_id), (HF_SOT, self.sot_id),
                                                           trim_offsets=False, add_prefix_space=False)
        fast.add_special_tokens([AddedToken(HF_SOT, special=True), AddedToken(HF_EOT, special=True)])
        return fast.to_str()


def _read_merges(path: str | None) -> list[tuple[str, str]]:
    if path is None:
        data = resources.files("dualtower").joinpath("assets/bpe_simple_vocab_16e6.txt.gz").read_bytes()
    else:
        with open(path, "rb") as f:
            data = f.read()
    lines = gzip.decompress(data).decode("utf-8").split("\n")[1 : NUM_MERGES + 1]
    return [tuple(line.split()) for line in lines]
