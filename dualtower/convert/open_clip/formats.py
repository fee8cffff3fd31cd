"""The open_clip family's formats: open_clip's state dict (and OpenAI's, the same layout, QuickGELU only) and
open_clip's hub layout. The key tables are in `tables`, the hub's config in `hub`."""

from __future__ import annotations

from pathlib import Path

from ...config import ModelConfig
from ..files import STATE_DICT_SUFFIXES, Probe, read_state_file
from ..registry import Format, register
from ..remap import ConversionError
from ..timm import tables as timm_tables
from . import hub, tables
from .hub import CONFIG, WEIGHTS, apply_preprocess_cfg, decode_model_cfg, encode_model_cfg, write_directory


class OpenClip(Format):
    """Written to a .safetensors/.bin name: the state dict `open_clip.create_model(NAME)` loads. Written to a
    folder: open_clip's hub layout with its model config (for architectures open_clip does not name)."""

    name = "open_clip"
    holds_hf_text = True
    holds_conv = True
    summary = ("an open_clip or OpenAI CLIP state dict (visual.conv1 / visual.trunk; CLIP or CustomTextCLIP), "
               "architecture named by arch=")

    def detect(self, probe) -> bool:
        return "visual.conv1.weight" in probe.keys or timm_tables.is_trunk(probe.keys, "visual.trunk.")

    to_ours = staticmethod(tables.import_state_dict)
    from_ours = staticmethod(tables.export_state_dict)
    check = staticmethod(tables.check_exportable)

    def write(self, model, dst) -> None:
        if Path(dst).suffix in STATE_DICT_SUFFIXES:
            super().write(model, dst)
        else:
            hub.write_directory(model, dst)


class OpenAI(OpenClip):
    """OpenAI's CLIP state dict: open_clip's CLIP layout, read the same way; written only for QuickGELU towers,
    the one activation OpenAI's loader builds."""

    name = "openai"
    holds_hf_text = False
    summary = "OpenAI's CLIP state dict (open_clip's CLIP layout; written only for QuickGELU architectures)"

    def detect(self, probe) -> bool:
        return False  # the same keys as open_clip's: read through open_clip, or named with --from openai

    check = staticmethod(tables.check_openai)


class OpenClipHub(Format):
    name = "open_clip_hub"
    summary = "open_clip's hub layout (open_clip_config.json + open_clip_model.safetensors or .bin)"

    def detect(self, probe: Probe) -> bool:
        return probe.is_directory and (probe.path / CONFIG).is_file()

    def read_config(self, probe: Probe, arch: str | None) -> ModelConfig:
        data = probe.read_json(CONFIG) or {}
        name = arch or probe.path.name
        if not isinstance(data.get("model_cfg"), dict):
            raise ConversionError(f"{probe.path / CONFIG}: no model_cfg object")
        cfg = decode_model_cfg(data["model_cfg"], name)
        return apply_preprocess_cfg(cfg, data.get("preprocess_cfg") or {}, name)

    def read_state(self, probe: Probe, cfg: ModelConfig) -> dict:
        for weights in WEIGHTS:
            if (probe.path / weights).is_file():
                return read_state_file(probe.path / weights)
        raise ConversionError(f"{probe.path}: neither {' nor '.join(WEIGHTS)}")

    to_ours = staticmethod(tables.import_state_dict)

    def check(self, cfg: ModelConfig) -> None:
        tables.check_exportable(cfg)
        encode_model_cfg(cfg)

    def write(self, model, dst) -> None:
        write_directory(model, dst)


register(OpenClip())
register(OpenAI())
register(OpenClipHub())
