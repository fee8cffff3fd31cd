"""The registry of checkpoint formats: each format is one object with one interface, and callers ask here.

A format answers five questions (after timm's model registry and torchtitan's state-dict adapters):
- `detect(probe)`: does this directory or state dict file hold this format? Asked in one place only, `detect`
  below; with `source=` the caller names the format and nothing is guessed.
- `read_config(probe, arch)`: our ModelConfig for it (from the directory's own config, or from the
  architecture named by the caller for a bare state dict).
- `to_ours(state, cfg, source)` / `from_ours(state, cfg)`: the key tables, both ways.
- `can_write(cfg)`: None when this format can hold a model of `cfg`, else the reason it cannot.
- `write(model, dst)`: the files, atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..archs import get_config
from ..checkpoint import CheckpointError, state_of
from ..config import ConvVisionConfig, HFTextConfig, ModelConfig
from ..errors import UserError
from .files import Probe, write_model_directory, write_state_file
from .remap import ConversionError


class Format:
    name: str = ""
    summary: str = ""  # one line for error messages and `dualtower convert --help`
    vision_only: bool = False  # holds a vision tower and no text tower, whatever the architecture has
    holds_naflex: bool = False  # can hold a NaFlex vision tower
    holds_hf_text: bool = False  # can hold a transformers text encoder (multilingual CLIP)
    holds_conv: bool = False  # can hold convolutional vision parts (FastViT and ConvNeXt towers, B's conv stem)

    def detect(self, probe: Probe) -> bool:
        raise NotImplementedError

    def read_config(self, probe: Probe, arch: str | None) -> ModelConfig:
        """A bare state dict carries no config: the caller names the architecture."""
        if arch is None:
            raise CheckpointError(f"{probe.path}: a bare {self.name} state dict does not name its architecture; "
                                  "pass arch= (--arch on the command line), for example ViT-B-32 (`dualtower archs` "
                                  "lists them)")
        cfg = get_config(arch)
        return cfg.replace(text=None) if self.vision_only else cfg

    def read_state(self, probe: Probe, cfg: ModelConfig) -> dict:
        return probe.state()

    # The key tables, usually the module's import_state_dict / export_state_dict, set as staticmethods.
    def to_ours(self, state: dict, cfg: ModelConfig, our_keys: set[str], source: str) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def from_ours(self, state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def check(self, cfg: ModelConfig) -> None:
        """Raises ConversionError naming what of `cfg` this format cannot hold."""

    def preprocessing_changes(self, cfg: ModelConfig) -> list[str]:
        """How the reader of what this format writes will prepare images unlike this model (none: alike)."""
        return []

    def can_write(self, cfg: ModelConfig) -> str | None:
        if cfg.vision is not None and cfg.vision.naflex and not self.holds_naflex:
            return (f"a NaFlex vision tower (SigLIP 2) is written as hf-siglip2 or dualtower; {self.name} has no "
                    "place for its patch-sequence input")
        conv = _conv_parts(cfg)
        if conv and not self.holds_conv:
            return f"{conv} is written as open_clip, timm or dualtower; {self.name} has no place for it"
        if isinstance(cfg.text, HFTextConfig) and not self.holds_hf_text:
            return (f"a transformers text encoder ({cfg.text.model_type}) is written as open_clip or dualtower; "
                    f"{self.name} has no place for it")
        return reason(self.check, cfg)

    def write(self, model, dst: Path) -> None:
        write_state_file(self.from_ours(state_of(model), model.cfg), dst)


def _conv_parts(cfg: ModelConfig) -> str:
    v = cfg.vision
    if isinstance(v, ConvVisionConfig):
        return f"a convolutional vision tower ({v.family})"
    return "MobileCLIP-B's convolutional stem" if v is not None and v.stem != "patch" else ""


class ReadOnlyFormat(Format):
    """A layout read but not written (a hub layout of a format whose state dict we do write)."""

    write_with = ""  # the format that writes the same weights

    def check(self, cfg: ModelConfig) -> None:
        raise ConversionError(f"writing {self.name} is not supported; write the weights with to={self.write_with!r}")

    def write(self, model, dst: Path) -> None:
        self.check(model.cfg)


class HFDirectory(Format):
    """A transformers model directory of one model_type: config.json, the image processor's settings (see
    Probe.image_processor) and weights."""

    model_types: tuple[str, ...] = ()  # the config.json model_type values this format reads

    def detect(self, probe: Probe) -> bool:
        return probe.model_type in self.model_types

    def read_config(self, probe: Probe, arch: str | None) -> ModelConfig:
        """The model's config with its preprocessing from the image processor saved beside it. A vision tower with
        no image processor is refused: its preprocessing is not known, and defaults would give other pixels
        without a word."""
        settings, where = probe.image_processor()
        try:
            cfg = self.config_from_hf(probe.config, settings, str(probe.path))
        except ConversionError as e:
            raise ConversionError(f"{e}{f' (from {where})' if where else ''}") from None
        except (TypeError, ValueError, AttributeError, KeyError) as e:  # a field of the wrong type or shape
            raise ConversionError(f"{probe.path}: {where}: its settings are not an image processor's ({e})") from None
        if cfg.vision is not None and settings is None:
            raise ConversionError(
                f"{probe.path}: no image processor settings (processor_config.json or preprocessor_config.json), so "
                "its preprocessing is not known; save the model's processor beside it (processor.save_pretrained"
                "(directory)), as its Hub repository has it")
        return cfg

    def config_from_hf(self, hf: dict, preprocessor: dict | None, name: str) -> ModelConfig:
        raise NotImplementedError

    # What transformers' image processors do, which this family's processor config cannot change
    hf_preprocess = {"rgb": "white_first", "center_crop": "floor"}

    def preprocessing_changes(self, cfg: ModelConfig) -> list[str]:
        """How transformers' image processor, reading the directory written, will prepare images unlike this model
        does (empty when it prepares them alike)."""
        p, changes = cfg.preprocess, []
        if cfg.vision is None:
            return changes
        if p.rgb != self.hf_preprocess["rgb"]:
            changes.append(f"images not RGB are flattened onto white before resizing (this model: {p.rgb!r})")
        if p.resize_mode == "shortest" and p.center_crop != self.hf_preprocess["center_crop"]:
            changes.append("the center crop starts at (W - S) // 2, not round((W - S) / 2): one pixel over on some "
                           "sizes")
        return changes

    def hf_files(self, cfg: ModelConfig) -> tuple[dict, dict[str, str]]:
        """config.json's content and the other text files of the directory."""
        raise NotImplementedError

    def write(self, model, dst: Path) -> None:
        hf_config, files = self.hf_files(model.cfg)
        texts = {"config.json": json.dumps(hf_config, indent=2) + "\n", **own_tokenizer_files(model), **files}
        write_model_directory(dst, texts, "model.safetensors", self.from_ours(state_of(model), model.cfg))


def own_tokenizer_files(model) -> dict[str, bytes]:
    """The tokenizer files a model came with (SigLIP's spiece.model, SigLIP 2's tokenizer.json), to write beside
    its weights; none for a model with the bundled CLIP tokenizer."""
    from ..origin import tokenizer_files

    return {name: path.read_bytes() for name, path in tokenizer_files(model).items()}


def reason(check, cfg: ModelConfig) -> str | None:
    """`check(cfg)` raises ConversionError when a format cannot hold `cfg`: its message, else None."""
    try:
        check(cfg)
    except ConversionError as e:
        return str(e)
    return None


FORMATS: dict[str, Format] = {}  # filled by the format modules as dualtower.convert imports them
ALIASES = {"ours": "dualtower"}
# what `to="hf"` chooses among, by the model
HF_FORMATS = ("hf-clip", "hf-metaclip2", "hf-siglip", "hf-siglip2", "hf-internvl")


def register(fmt: Format) -> Format:
    FORMATS[fmt.name] = fmt
    return fmt


def names() -> list[str]:
    return sorted(FORMATS)


def get_format(name: str) -> Format:
    name = ALIASES.get(name, name)
    if name not in FORMATS:
        export = "; an ONNX or torch.export deployment is written by `dualtower export MODEL OUT`" \
            if name.lower() in ("onnx", "torch-export", "torchscript", "pt2") else ""
        raise UserError(f"unknown format {name!r}; known: {', '.join(sorted(FORMATS))} (and aliases "
                        f"{', '.join(sorted(ALIASES))}){export}")
    return FORMATS[name]


def detect(probe: Probe) -> Format:
    """The one format that claims `probe`; an error listing the candidates when none or several do."""
    found = [f for f in FORMATS.values() if f.detect(probe)]
    if len(found) == 1:
        return found[0]
    what = "directory" if probe.is_directory else "state dict"
    if not found:
        from ..export_format import FORMAT_NAME

        meta = probe.config if probe.is_directory else {}
        if isinstance(meta, dict) and meta.get("format") == FORMAT_NAME:
            runtime = meta.get("runtime")
            raise CheckpointError(f"{probe.path}: an export for {runtime} (`dualtower export`), not a checkpoint"
                                  + (f"; run it with --runtime {runtime}" if runtime in ("onnx", "openvino") else ""))
        detail = f" (config.json model_type {probe.model_type!r})" if probe.is_directory else ""
        raise CheckpointError(f"{probe.path}: no known format recognises this {what}{detail}; known formats: "
                              f"{', '.join(sorted(FORMATS))} (`dualtower convert --help` says what each holds)")
    candidates = ", ".join(sorted(f.name for f in found))
    raise CheckpointError(f"{probe.path}: this {what} matches several formats ({candidates}); name one with source= "
                          "(dualtower convert --from)")


def writer_for(target: str, cfg: ModelConfig) -> Format:
    """The format `target` names; "hf" picks the transformers format that can hold this model."""
    candidates = [get_format(n) for n in HF_FORMATS] if target == "hf" else [get_format(target)]
    reasons = []
    for fmt in candidates:
        reason = fmt.can_write(cfg)
        if reason is None:
            return fmt
        reasons.append(f"{fmt.name}: {reason}")
    raise ConversionError(f"{cfg.name} cannot be written as {target}: " + "; ".join(reasons))
