"""Pretrained models by name: `hf-hub:ORG/NAME[@REVISION]`, or a short name from `KNOWN` ("ViT-B-32/openai").

Files come through `huggingface_hub` (its cache, HF_HOME, HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE are its own),
and only the files the repo's layout needs: its config files first, then the weights of that layout,
safetensors before a pickle (which is read with `weights_only=True` only). A weight file whose ETag is a sha256
(the Hub's ETag for LFS files) is checked against it after download; a mismatch removes it from the cache.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .archs import PRETRAINED
from .config import TOKENIZER_FILES
from .errors import NotFound, UserError

PREFIX = "hf-hub:"

# The files that say what a repo holds; all small.
META_FILES = ("open_clip_config.json", "config.json", "preprocessor_config.json", "processor_config.json")
# The weights of each layout, in order of preference; an index names the shards of a sharded checkpoint.
WEIGHTS = {
    "open_clip_hub": ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
    "directory": ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                  "pytorch_model.bin"),
}
# Small files fetched beside the weights: the tokenizer's, and the model card (its licence field).
EXTRA_FILES = (*TOKENIZER_FILES, "vocab.json", "merges.txt", "tokenizer.model", "README.md")


# The most bytes each kind of small file may have (a Gemma tokenizer.json is about 33 MB): a repo's 100 MB README
# or tokenizer file is refused before it is downloaded.
FILE_LIMITS = {"config": 16 << 20, "tokenizer": 128 << 20, "README.md": 1 << 20}  # XLM-V's tokenizer.json: ~50 MB
REVISION = re.compile(r"(?!.*\.\.)(?!.*//)[\w][\w.\-/]{0,127}(?<![/.])")  # a branch, tag, refs/pr/N or commit


class HubError(NotFound):
    """A model could not be fetched; the message names the repo, the files and what to do."""


@dataclass(frozen=True)
class Known:
    """A well-known pretrained model: where it lives and in which layout (a format of dualtower.convert)."""

    name: str
    repo: str
    layout: str
    arch: str  # our architecture of the same shape (for `dualtower models`)


# The well-known pretrained models: a view of the architecture table's pretrained entries (archs.ARCHS).
KNOWN = {name: Known(name, p.repo, p.layout, arch) for name, (arch, p) in PRETRAINED.items()}


def is_hub_name(spec) -> bool:
    return isinstance(spec, str) and (spec.startswith(PREFIX) or spec in KNOWN)


def parse(spec: str) -> tuple[str, str | None, str | None]:
    """(repo, revision, layout) of `hf-hub:ORG/NAME[@REVISION]` or a known short name."""
    if spec in KNOWN:
        known = KNOWN[spec]
        return known.repo, None, known.layout
    repo, _, revision = spec[len(PREFIX):].partition("@")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo) or ".." in repo:
        raise UserError(f"{spec!r}: expected hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION")
    if revision and not REVISION.fullmatch(revision):
        raise UserError(f"{spec!r}: revision {revision!r} is not a branch, tag or commit name")
    return repo, revision or None, None


def _reachable(endpoint: str, timeout: float = 5.0) -> bool:
    """Whether the Hub's endpoint answers at all (any HTTP status counts), in one try."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False
    return True


class _Repo:
    """Downloads one repo's files at one revision, remembering what is absent."""

    def __init__(self, repo: str, revision: str | None):
        from huggingface_hub import constants

        self.repo, self.revision = repo, revision
        self.missing: list[str] = []  # not cached and not reachable
        # Without a network huggingface_hub retries every file with back-off (over a minute for one model); one
        # quick look at the endpoint decides instead, and an unreachable Hub means the cache alone.
        self.local_only = constants.HF_HUB_OFFLINE or not _reachable(constants.ENDPOINT)

    def get(self, name: str, limit: int | None = None) -> Path | None:
        """The local path of `name`, downloaded if needed; None when the repo has no such file. A file over
        `limit` bytes (as the Hub announces it) is refused before a byte of it is downloaded."""
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        try:
            cached = try_to_load_from_cache(self.repo, name, revision=self.revision)
            if limit is not None and not self.local_only and not isinstance(cached, str):
                size = get_hf_file_metadata(hf_hub_url(self.repo, name, revision=self.revision)).size
                if size is not None and size > limit:
                    raise HubError(f"hf-hub:{self.repo}: {name} is {size:,} bytes, over the {limit:,} a model's "
                                   f"{name} needs; not downloaded")
            return Path(hf_hub_download(self.repo, name, revision=self.revision, local_files_only=self.local_only))
        except LocalEntryNotFoundError:  # offline (or the Hub unreachable) and not in the cache
            if try_to_load_from_cache(self.repo, name, revision=self.revision) is None:
                self.missing.append(name)
            return None
        except EntryNotFoundError:  # the repo has no such file
            return None

    def first(self, names: tuple[str, ...]) -> Path | None:
        for name in names:
            path = self.get(name)
            if path is not None:
                return path
        return None


def fetch(spec: str) -> tuple[Path, str | None, Path | None]:
    """The local snapshot directory holding what the model needs, the format it is in (None: detect it), and
    the folder of its own tokenizer when that lives in another repo (None: beside the weights, or none).

    open_clip's MetaCLIP 2 repos name their tokenizer (text_cfg.hf_tokenizer_name, e.g. facebook/xlm-v-base)
    instead of carrying it, as open_clip's get_tokenizer reads it: the tokenizer files come from that repo."""
    try:
        import huggingface_hub  # noqa: F401
    except ImportError as e:
        raise HubError(f"{spec}: loading from the Hub needs huggingface_hub (pip install huggingface_hub)") from e
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    repo_id, revision, layout = parse(spec)
    repo = _Repo(repo_id, revision)
    try:
        meta = {name: repo.get(name, FILE_LIMITS["config"]) for name in META_FILES}
        found = [p for p in meta.values() if p is not None]
        if not found:
            raise HubError(_missing_message(spec, repo, "its config (open_clip_config.json or config.json)"))
        snapshot = found[0].parent
        if layout is None and meta["open_clip_config.json"] is not None:
            layout = "open_clip_hub"  # a repo with both layouts (LAION's): open_clip's files are the originals
        weights = repo.first(WEIGHTS["open_clip_hub" if layout == "open_clip_hub" else "directory"])
        if weights is None:
            raise HubError(_missing_message(spec, repo, "weights (" + ", ".join(
                WEIGHTS["open_clip_hub" if layout == "open_clip_hub" else "directory"]) + ")"))
        files = [weights]
        if weights.name.endswith(".index.json"):
            from .convert.files import shard_names

            files = [_shard(repo, spec, name) for name in shard_names(weights)]
        for path in files:
            verify(path)
        for name in EXTRA_FILES:
            repo.get(name, FILE_LIMITS["README.md" if name == "README.md" else "tokenizer"])
        tokenizer_dir = _named_tokenizer(meta["open_clip_config.json"], snapshot, spec)
    except HubError:
        raise
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise HubError(f"{spec}: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    except HfHubHTTPError as e:
        raise HubError(f"{spec}: the Hub answered {str(e).splitlines()[0]}") from e
    except Exception as e:  # the connection broke mid-file, a size check failed, ...: nothing was cached
        raise HubError(f"{spec}: downloading from {repo_id} failed ({type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''}); the file was not added to the cache. "
                       "Try again.") from e
    return snapshot, layout, tokenizer_dir


def _named_tokenizer(config: Path | None, snapshot: Path, spec: str) -> Path | None:
    """The snapshot of the tokenizer repo an open_clip config names, when the model's repo has no tokenizer.json."""
    import json

    if config is None or (snapshot / "tokenizer.json").is_file():
        return None
    try:
        text_cfg = json.loads(config.read_text(encoding="utf-8")).get("model_cfg", {}).get("text_cfg", {})
    except (ValueError, AttributeError):
        return None  # the loader reports a bad config
    name = text_cfg.get("hf_tokenizer_name") if isinstance(text_cfg, dict) else None
    if not isinstance(name, str) or name.count("/") != 1:
        return None
    repo = _Repo(name, None)
    files = {n: repo.get(n, FILE_LIMITS["tokenizer"]) for n in TOKENIZER_FILES}
    if files["tokenizer.json"] is None:
        raise HubError(f"{spec}: its open_clip config names the tokenizer {name}, which has no tokenizer.json"
                       + (" in the cache (offline)" if repo.missing else ""))
    return files["tokenizer.json"].parent


def _shard(repo: _Repo, spec: str, name: str) -> Path:
    path = repo.get(name)
    if path is None:
        raise HubError(_missing_message(spec, repo, f"the shard {name} its index names"))
    return path


def _missing_message(spec: str, repo: _Repo, what: str) -> str:
    if repo.missing:
        return (f"{spec}: {what} not found: {', '.join(repo.missing)} are not in the Hugging Face cache and the Hub "
                f"cannot be reached (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}). Download them where "
                f"there is a network: `hf download {repo.repo}"
                + (f" --revision {repo.revision}" if repo.revision else "")
                + "` (`huggingface-cli download` before huggingface_hub 1.0), then copy the cache (HF_HOME).")
    return f"{spec}: the repo {repo.repo} has no {what}"


def verify(path: Path) -> None:
    """Check a cached file against its sha256 ETag (the blob's name in the cache); remove it on a mismatch."""
    blob = Path(os.path.realpath(path))
    etag = blob.name
    if not re.fullmatch(r"[0-9a-f]{64}", etag):
        return  # a git-sha ETag (small files): huggingface_hub checked the size
    digest = hashlib.sha256()
    with open(blob, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    if digest.hexdigest() != etag:
        blob.unlink(missing_ok=True)
        Path(path).unlink(missing_ok=True)
        raise HubError(f"{path.name}: the downloaded file's sha256 is {digest.hexdigest()}, not {etag} as the Hub "
                       "says; it was removed from the cache. Try again.")


def licence(repo: str) -> str:
    """The `license:` of a repo's model card when the card is in the local cache, else "" (no network used)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return ""
    card = try_to_load_from_cache(repo, "README.md")
    if not isinstance(card, str):
        return ""
    text = Path(card).read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return ""
    front = text[3:].split("\n---", 1)[0]
    found = re.search(r"^licen[cs]e:\s*(\S+)", front, flags=re.MULTILINE)
    return found.group(1).strip("'\"") if found else ""


def known_models() -> list[dict]:
    """The well-known names: repo, layout, parameter count of the architecture, licence when the card is cached."""
    import torch

    from .archs import get_config
    from .model import DualEncoder

    rows = []
    for known in KNOWN.values():
        with torch.device("meta"):
            params = sum(p.numel() for p in DualEncoder(get_config(known.arch)).parameters())
        rows.append({"name": known.name, "repo": known.repo, "layout": known.layout, "arch": known.arch,
                     "params": params, "licence": licence(known.repo)})
    return rows
