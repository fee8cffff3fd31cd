"""transformers' InternVL layout: `InternVLVisionModel` and `InternVLModel` directories (the vision tower is
read; the language model and projector are not), and bare state dicts in that layout. The key tables live
beside InternVL's own in `internvl`."""

from __future__ import annotations

import json

from ..checkpoint import state_of
from ..config import ModelConfig
from .files import write_model_directory
from .internvl import InternVL, check_config, config_to_hf
from .registry import register
from .remap import ConversionError


class HFInternVL(InternVL):
    name = "hf-internvl"
    summary = ("a transformers InternVLVisionModel / InternVLModel directory (model_type 'internvl_vision' or "
               "'internvl'), or a state dict in its layout")
    layout = "hf"
    model_types = ("internvl_vision", "internvl")

    def check(self, cfg: ModelConfig) -> None:
        if cfg.vision.pool == "mean_query":
            raise ConversionError(f"{cfg.name}: transformers has no InternVL-C image head; write it with "
                                  "to='internvl'")
        check_config(cfg)

    def write(self, model, dst) -> None:
        texts = {"config.json": json.dumps(config_to_hf(model.cfg), indent=2) + "\n"}
        write_model_directory(dst, texts, "model.safetensors", self.from_ours(state_of(model), model.cfg))


FORMAT = register(HFInternVL())
