"""Where a loaded model came from, as one frozen record (no torch).

The loader (`convert.load`) makes it; the model and its Embedder carry it; checkpoints, exports and converters
write the model's own tokenizer files from it, through the one list `config.TOKENIZER_FILES`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from .config import TOKENIZER_FILES


@dataclass(frozen=True)
class Origin:
    source: str | None = None  # the path, Hub name or export folder it was loaded from; None: built here
    layout: str = "random"  # the format it was read in (dualtower, open_clip, hf-siglip, ..., onnx); random: built
    tokenizer_dir: Path | None = None  # a folder holding the model's own tokenizer files (SentencePiece, Gemma)
    weights_sha256: str | None = None  # the digest of its fp32 weights, where the loader knows it (an export's)

    @classmethod
    def of_folder(cls, folder: "str | os.PathLike", layout: str, source: str | None = None,
                  weights_sha256: str | None = None) -> "Origin":
        """The origin of a model read from `folder`: its tokenizer folder is `folder` when it holds any of the
        tokenizer files."""
        folder = Path(folder)
        own = folder.is_dir() and any((folder / name).is_file() for name in TOKENIZER_FILES)
        return cls(source if source is not None else str(folder), layout, folder if own else None, weights_sha256)

    def replace(self, **changes) -> "Origin":
        return replace(self, **changes)


def tokenizer_files(model) -> dict[str, Path]:
    """The own tokenizer files of a model (a DualEncoder or an Embedder) that exist, file name -> path, from the
    one list TOKENIZER_FILES; none for a model with the CLIP BPE vocabulary, which ships with the package."""
    folder = model.origin.tokenizer_dir
    if folder is None or model.cfg.tokenizer == "clip-bpe":
        return {}
    return {name: folder / name for name in TOKENIZER_FILES if (folder / name).is_file()}
