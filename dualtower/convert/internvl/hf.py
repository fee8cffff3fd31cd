"""transformers' InternVL layout: `InternVLVisionModel` and `InternVLModel` directories (the vision tower is
read; the language model and projector are not), and bare state dicts in that layout. The key tables live
beside InternVL's own in `internvl`."""

from __future__ import annotations

import json
from dataclasses import replace

from ...checkpoint import state_of
from ...config import ModelConfig
from ..files import write_model_directory
from ..registry import register
from ..remap import ConversionError
from .tables import InternVL, check_config, config_to_hf


class HFInternVL(InternVL):
    name = "hf-internvl"
    summary = ("a transformers InternVLVisionModel / InternVLModel directory (model_type 'internvl_vision' or "
               "'internvl'), or a state dict in its layout")
    layout = "hf"
    model_types = ("internvl_vision", "internvl")

    def read_config(self, probe, arch):
        """InternVL's fixed preprocessing (ImageNet statistics, a 448 square, bicubic), or the image processor's
        settings where one was saved beside the model (an InternVLModel repository's GotOcr2 processor): its mean,
        std, size and resampling, checked against the tower."""
        cfg = super().read_config(probe, arch)
        settings, where = probe.image_processor() if probe.is_directory else (None, "")
        if settings is None:
            return cfg
        source = f"{probe.path}: {where}"
        size = settings.get("size", {"height": cfg.vision.image_size, "width": cfg.vision.image_size})
        if not isinstance(size, dict) or size.get("height") != size.get("width") or \
                size.get("height") != cfg.vision.image_size:
            raise ConversionError(f"{source}: size {size} is not the tower's {cfg.vision.image_size} square")
        resample = settings.get("resample", 3)
        if resample not in (2, 3):
            raise ConversionError(f"{source}: resample {resample!r} is not bilinear (2) or bicubic (3)")
        try:
            pre = replace(cfg.preprocess, mean=tuple(settings.get("image_mean", cfg.preprocess.mean)),
                          std=tuple(settings.get("image_std", cfg.preprocess.std)),
                          interpolation="bicubic" if resample == 3 else "bilinear")
        except (TypeError, ValueError) as e:
            raise ConversionError(f"{source}: {e}") from None
        return replace(cfg, preprocess=pre)

    def check(self, cfg: ModelConfig) -> None:
        if cfg.vision.pool == "mean_query":
            raise ConversionError(f"{cfg.name}: transformers has no InternVL-C image head; write it with "
                                  "to='internvl'")
        check_config(cfg)

    def write(self, model, dst) -> None:
        texts = {"config.json": json.dumps(config_to_hf(model.cfg), indent=2) + "\n"}
        write_model_directory(dst, texts, "model.safetensors", self.from_ours(state_of(model), model.cfg))


FORMAT = register(HFInternVL())
