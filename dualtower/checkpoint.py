"""Checkpoints: our directory format, foreign formats in and out, atomic writes, no pickle.

Our format is a directory with `config.json` ({"format": "dualtower", "version": 1, "model": ModelConfig}) and
`model.safetensors`. A checkpoint is checked against its config (every key and shape) before any tensor is
read. Foreign `.bin/.pt/.pth` files are read with `torch.load(weights_only=True)` only: a file that holds
anything but tensors and plain containers is refused, never unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

import torch

from .archs import get_config
from .config import ModelConfig
from .convert import hf_clip, hf_siglip, internvl, open_clip, timm_vit
from .convert.remap import ConversionError
from .model import DualEncoder

FORMAT, VERSION = "dualtower", 1
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
STATE_DICT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


class CheckpointError(ValueError):
    """A checkpoint is unreadable, unsafe or does not match its config; the message names the file."""


# ----------------------------------------------------------------------------------------------- atomic writes

def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: "str | os.PathLike"):
    """Yields a temporary path beside `path`; on success it is fsynced and renamed over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_directory(path: "str | os.PathLike"):
    """Yields a temporary directory; on success its files are fsynced and it takes the place of `path`.

    An existing `path` is replaced only if it is a checkpoint (has a config.json) or empty, and is moved aside
    before the new one is renamed in, so a crash at any point leaves either the old or the new one whole.
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / CONFIG_FILE).exists())):
        raise CheckpointError(f"{path}: exists and is not a checkpoint directory; refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(path, old)
        os.rename(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------- our format

def _state(model: DualEncoder) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def write_files(model: DualEncoder, directory: Path) -> None:
    """config.json and model.safetensors into an existing (temporary) directory."""
    from safetensors.torch import save_file

    meta = {"format": FORMAT, "version": VERSION, "model": model.cfg.to_dict()}
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    save_file(_state(model), directory / WEIGHTS_FILE, metadata={"format": "pt"})


def save(model: DualEncoder, directory: "str | os.PathLike") -> None:
    with atomic_directory(directory) as tmp:
        write_files(model, tmp)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable JSON file ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _empty_model(cfg: ModelConfig) -> DualEncoder:
    with torch.device("meta"):
        return DualEncoder(cfg)


def _check_shapes(model: DualEncoder, shapes: dict[str, tuple], source: str) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    wrong = sorted(f"{k} {shapes[k]} (expected {expected[k]})" for k in expected
                   if k in shapes and tuple(shapes[k]) != expected[k])
    problems = [f"missing {missing[:8]}" if missing else "", f"unexpected {extra[:8]}" if extra else "",
                f"wrong shapes {wrong[:8]}" if wrong else ""]
    problems = [p for p in problems if p]
    if problems:
        raise CheckpointError(f"{source}: weights do not match the config: " + "; ".join(problems))


def _finish(cfg: ModelConfig, state: dict[str, torch.Tensor], source: str) -> DualEncoder:
    model = _empty_model(cfg)
    _check_shapes(model, {k: tuple(v.shape) for k, v in state.items()}, source)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, assign=True)
    return model.eval()


def _load_ours(directory: Path, meta: dict) -> DualEncoder:
    from safetensors import safe_open

    source = str(directory / CONFIG_FILE)
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{source}: format version {meta.get('version')!r} is not supported (expected {VERSION})")
    unknown = sorted(set(meta) - {"format", "version", "model"})
    if unknown:
        raise CheckpointError(f"{source}: unknown keys {unknown}")
    try:
        cfg = ModelConfig.from_dict(meta.get("model"))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: {e}") from e
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    try:
        with safe_open(weights, framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            _check_shapes(_empty_model(cfg), shapes, str(weights))  # before any tensor is read
            state = {k: f.get_tensor(k) for k in f.keys()}
    except CheckpointError:
        raise
    except Exception as e:  # safetensors reports a corrupt header or truncated data this way
        raise CheckpointError(f"{weights}: not a readable safetensors file ({e})") from e
    return _finish(cfg, state, str(weights))


# ------------------------------------------------------------------------------------------ foreign formats in

def read_state_file(path: "str | os.PathLike") -> dict:
    """Tensors of a .safetensors file, or of a .bin/.pt/.pth file read without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for foreign objects, RuntimeError for corrupt archives
        raise CheckpointError(
            f"{path}: refused: it cannot be read as plain tensors with torch.load(weights_only=True) "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). dualtower never unpickles "
            "arbitrary objects; convert the file to safetensors in an environment you trust.") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state


def _read_weights(directory: Path) -> dict:
    """The tensors of an HF-style directory: sharded safetensors, model.safetensors or pytorch_model.bin."""
    state: dict = {}
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        for shard in sorted(set(_read_json(index).get("weight_map", {}).values())):
            state.update(read_state_file(directory / shard))
    elif (directory / WEIGHTS_FILE).is_file():
        state = read_state_file(directory / WEIGHTS_FILE)
    elif (directory / "pytorch_model.bin").is_file():
        state = read_state_file(directory / "pytorch_model.bin")
    else:
        raise CheckpointError(f"{directory}: an HF directory without model.safetensors or pytorch_model.bin")
    return state


# model_type in config.json -> the converter that reads the directory
HF_MODEL_TYPES = ("clip", "siglip", "internvl_vision", "internvl", "internvl_chat")


def _load_hf(directory: Path, hf_config: dict) -> DualEncoder:
    name = str(directory)
    pre_path = directory / "preprocessor_config.json"
    pre = _read_json(pre_path) if pre_path.is_file() else None
    kind = hf_config.get("model_type")
    if kind == "clip":
        cfg, importer = hf_clip.config_from_hf(hf_config, pre, name), hf_clip.import_state_dict
    elif kind == "siglip":
        cfg, importer = hf_siglip.config_from_hf(hf_config, pre, name), hf_siglip.import_state_dict
    else:  # InternViT alone, or the vision tower of a whole InternVL model
        vision = hf_config if kind == "internvl_vision" else hf_config.get("vision_config")
        if not isinstance(vision, dict):
            raise CheckpointError(f"{name}: config.json of model_type {kind!r} has no vision_config")
        cfg, importer = internvl.config_from_hf(vision, name), internvl.import_state_dict
    state = _read_weights(directory)
    our_keys = set(_empty_model(cfg).state_dict())
    return _finish(cfg, importer(state, cfg, our_keys, name), name)


def _import_state_file(path: Path, arch: str) -> DualEncoder:
    """A bare state dict: InternViT (either layout, any prefix), a bare timm ViT, or open_clip/OpenAI CLIP."""
    cfg = get_config(arch)
    state = read_state_file(path)
    our_keys = set(_empty_model(cfg).state_dict())
    if internvl.find_layout(state) is not None:
        importer = internvl.import_state_dict
    elif "patch_embed.proj.weight" in state:
        importer = timm_vit.import_state_dict
    else:
        importer = open_clip.import_state_dict
    return _finish(cfg, importer(state, cfg, our_keys, str(path)), str(path))


def load(path: "str | os.PathLike", arch: str | None = None) -> DualEncoder:
    """Our checkpoint directory; an HF CLIPModel, SiglipModel or InternVL(Vision)Model directory; or a state
    dict file with `arch`: open_clip/OpenAI (EVA02-* and *-SigLIP too), a bare timm ViT, or InternViT."""
    path = Path(path)
    try:
        if path.is_dir():
            config_path = path / CONFIG_FILE
            if not config_path.is_file():
                raise CheckpointError(f"{path}: a directory without {CONFIG_FILE} is not a checkpoint")
            meta = _read_json(config_path)
            if meta.get("format") == FORMAT:
                return _load_ours(path, meta)
            if meta.get("model_type") in HF_MODEL_TYPES:
                return _load_hf(path, meta)
            raise CheckpointError(f"{config_path}: neither a dualtower checkpoint nor an HF config of a known "
                                  f"model_type ({', '.join(HF_MODEL_TYPES)}); got {meta.get('model_type')!r}")
        if path.suffix not in STATE_DICT_SUFFIXES:
            raise CheckpointError(f"{path}: not a checkpoint directory nor a {'/'.join(STATE_DICT_SUFFIXES)} file")
        if arch is None:
            raise CheckpointError(f"{path}: a bare state dict does not name its architecture; pass arch= "
                                  "(for example arch='ViT-B-32')")
        return _import_state_file(path, arch)
    except ConversionError as e:
        raise CheckpointError(str(e)) from e


# ----------------------------------------------------------------------------------------- foreign formats out

def _write_state_file(make_state, path: "str | os.PathLike") -> None:
    """`make_state()` written atomically as .safetensors, or with torch.save for .bin/.pt/.pth."""
    path = Path(path)
    if path.suffix not in STATE_DICT_SUFFIXES:
        raise CheckpointError(f"{path}: name the file .safetensors, .bin, .pt or .pth")
    state = make_state()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, tmp, metadata={"format": "pt"})
        else:
            torch.save(state, tmp)


def export_open_clip(model: DualEncoder, path: "str | os.PathLike") -> None:
    """An open_clip state dict (.safetensors, or .bin/.pt for torch.save) for `open_clip.create_model(name)`."""
    _write_state_file(lambda: open_clip.export_state_dict(_state(model), model.cfg), path)


def export_hf(model: DualEncoder, directory: "str | os.PathLike") -> None:
    """An HF directory for transformers: CLIPModel (config, weights, image processor, tokenizer files),
    SiglipModel for a SigLIP-style model (no tokenizer files: SigLIP's is not bundled), or InternVLVisionModel
    for a vision-only InternViT."""
    from safetensors.torch import save_file

    from .tokenizer import get_tokenizer

    cfg = model.cfg
    files: dict[str, str] = {}
    if cfg.text is None:
        state = internvl.export_state_dict(_state(model), cfg, layout="hf")
        hf_config = internvl.config_to_hf(cfg)
    elif cfg.vision.pool == "map":
        state = hf_siglip.export_state_dict(_state(model), cfg)
        hf_config = hf_siglip.config_to_hf(cfg)
        files["preprocessor_config.json"] = json.dumps(hf_siglip.preprocessor_to_hf(cfg), indent=2) + "\n"
    else:
        state = hf_clip.export_state_dict(_state(model), cfg)
        hf_config = hf_clip.config_to_hf(cfg)
        files["preprocessor_config.json"] = json.dumps(hf_clip.preprocessor_to_hf(cfg), indent=2) + "\n"
        files.update(get_tokenizer(cfg).hf_files())
    with atomic_directory(directory) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
        save_file(state, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")


def export_internvl(model: DualEncoder, path: "str | os.PathLike") -> None:
    """An InternViT state dict in InternVL's own layout (`embeddings.patch_embedding`, `encoder.layers.N.attn.qkv`,
    ...), as InternVL's `InternVisionModel.load_state_dict` takes it."""
    _write_state_file(lambda: internvl.export_state_dict(_state(model), model.cfg, layout="internvl"), path)


def convert(src: "str | os.PathLike", dst: "str | os.PathLike", arch: str | None = None,
            to: str = "dualtower") -> DualEncoder:
    writers = {"dualtower": save, "hf": export_hf, "open_clip": export_open_clip, "internvl": export_internvl}
    if to not in writers:
        raise ValueError(f"unknown target format {to!r}; choose one of {sorted(writers)}")
    model = load(src, arch=arch)
    try:
        writers[to](model, dst)
    except ConversionError as e:
        raise CheckpointError(str(e)) from e
    return model
