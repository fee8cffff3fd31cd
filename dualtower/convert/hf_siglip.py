"""HF transformers `SiglipModel` and `Siglip2Model` directories: config.json + model.safetensors, both ways.

SigLIP's towers: no class token, attention-pooling head (`vision_model.head`: probe, nn.MultiheadAttention,
layernorm, mlp), no vision projection; a bidirectional text tower pooled at the last position with a biased
projection (`text_model.head`); a learned logit bias. Its tokenizer (SentencePiece, or SigLIP 2's Gemma
tokenizer.json) is not converted: our config says tokenizer "external", the files travel beside the weights when
the model came with them, and otherwise texts are given as ids.

`Siglip2Model` is SigLIP 2's NaFlex model: the same towers and key names, with the patch embedding a Linear over
flattened (p, p, C) patches (ours is the Conv2d it equals, so the weight is permuted each way) and a position
grid of `num_patches` that is resampled to each image's own grid. (SigLIP 2's fixed-resolution checkpoints are
`SiglipModel`s.)
"""

from __future__ import annotations

import json
import math

import torch

from ..config import (INCEPTION_MEAN, INCEPTION_STD, SIGLIP_INIT_LOGIT_BIAS, SIGLIP_INIT_LOGIT_SCALE, ModelConfig,
                      PreprocessConfig, TextConfig, VisionConfig)
from .hf_clip import blocks
from .registry import HFDirectory, register
from .remap import ConversionError, Rule, expand, from_ours, rule, to_ours

TABLE: list[Rule] = [
    rule("visual.patch_embed.weight", "vision_model.embeddings.patch_embedding.weight"),
    rule("visual.patch_embed.bias", "vision_model.embeddings.patch_embedding.bias"),
    rule("visual.pos_embed", "vision_model.embeddings.position_embedding.weight"),
    *blocks("visual.transformer.blocks", "vision_model.encoder.layers"),
    rule("visual.norm_tokens.weight", "vision_model.post_layernorm.weight"),
    rule("visual.norm_tokens.bias", "vision_model.post_layernorm.bias"),
    rule("visual.pool.latent", "vision_model.head.probe", lead=2),
    rule("visual.pool.qkv.weight", "vision_model.head.attention.in_proj_weight"),
    rule("visual.pool.qkv.bias", "vision_model.head.attention.in_proj_bias"),
    rule("visual.pool.proj.weight", "vision_model.head.attention.out_proj.weight"),
    rule("visual.pool.proj.bias", "vision_model.head.attention.out_proj.bias"),
    rule("visual.pool.norm.weight", "vision_model.head.layernorm.weight"),
    rule("visual.pool.norm.bias", "vision_model.head.layernorm.bias"),
    rule("visual.pool.mlp.fc1.weight", "vision_model.head.mlp.fc1.weight"),
    rule("visual.pool.mlp.fc1.bias", "vision_model.head.mlp.fc1.bias"),
    rule("visual.pool.mlp.fc2.weight", "vision_model.head.mlp.fc2.weight"),
    rule("visual.pool.mlp.fc2.bias", "vision_model.head.mlp.fc2.bias"),
    rule("text.token_embed.weight", "text_model.embeddings.token_embedding.weight"),
    rule("text.pos_embed", "text_model.embeddings.position_embedding.weight"),
    *blocks("text.transformer.blocks", "text_model.encoder.layers"),
    rule("text.norm.weight", "text_model.final_layer_norm.weight"),
    rule("text.norm.bias", "text_model.final_layer_norm.bias"),
    rule("text.head.weight", "text_model.head.weight"),
    rule("text.head.bias", "text_model.head.bias"),
    rule("logit_scale", "logit_scale", lead=1),
    rule("logit_bias", "logit_bias", lead=1),
]

DROPPED = {"text_model.embeddings.position_ids", "vision_model.embeddings.position_ids"}

_ACT_FROM_HF = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu", "quick_gelu": "quick_gelu"}
_ACT_TO_HF = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "quick_gelu": "quick_gelu"}
_RESAMPLE_FROM_HF = {2: "bilinear", 3: "bicubic"}
_RESAMPLE_TO_HF = {"bilinear": 2, "bicubic": 3}


def _rules(cfg: ModelConfig) -> list[Rule]:
    return expand(TABLE, {"visual.": cfg.vision.depth, "text.": cfg.text.depth})


PATCH_KEY = "vision_model.embeddings.patch_embedding.weight"


def config_from_hf(hf: dict, preprocessor: dict | None, name: str) -> ModelConfig:
    naflex = hf.get("model_type") == "siglip2"
    if hf.get("model_type") not in ("siglip", "siglip2"):
        raise ConversionError(f"{name}: config.json has model_type {hf.get('model_type')!r}, expected 'siglip' or "
                              "'siglip2'")
    v, t = hf.get("vision_config", {}), hf.get("text_config", {})
    if not v.get("vision_use_head", True):
        raise ConversionError(f"{name}: a SigLIP vision tower without its attention-pooling head is not supported")

    def act(c: dict, tower: str) -> str:
        a = c.get("hidden_act", "gelu_pytorch_tanh")
        if a not in _ACT_FROM_HF:
            raise ConversionError(f"{name}: {tower} hidden_act {a!r} is not supported")
        return _ACT_FROM_HF[a]

    try:
        width = v.get("hidden_size", 768)
        patch = v.get("patch_size", 16)
        patch = patch[0] if isinstance(patch, (list, tuple)) and len(set(patch)) == 1 else patch
        if naflex:  # a square grid of num_patches learned positions
            grid = math.isqrt(v.get("num_patches", 256))
            if grid * grid != v.get("num_patches", 256):
                raise ConversionError(f"{name}: vision num_patches {v.get('num_patches')} is not a square grid")
            image = grid * patch
        else:
            image = v.get("image_size", 224)
        vocab = t.get("vocab_size", 32000)
        pad = t.get("pad_token_id", 1)
        eos = t.get("eos_token_id", 1)
        vision = VisionConfig(
            image_size=image, patch_size=patch, width=width,
            depth=v.get("num_hidden_layers", 12), heads=v.get("num_attention_heads", 12),
            mlp_dim=v.get("intermediate_size", 3072), act=act(v, "vision"), norm_eps=v.get("layer_norm_eps", 1e-6),
            patch_bias=True, norm_pre=False, class_token=False, pool="map", head=False, naflex=naflex,
        )
        text = TextConfig(
            vocab_size=vocab, context_length=t.get("max_position_embeddings", 64), width=t.get("hidden_size", 768),
            depth=t.get("num_hidden_layers", 12), heads=t.get("num_attention_heads", 12),
            mlp_dim=t.get("intermediate_size", 3072), act=act(t, "text"), norm_eps=t.get("layer_norm_eps", 1e-6),
            causal=False, pool="last", head_bias=True,
            eot_id=eos if isinstance(eos, int) and 0 <= eos < vocab else 1,
            pad_id=pad if isinstance(pad, int) and 0 <= pad < vocab else 0,
        )
        pre = preprocessor or {}
        size = pre.get("size", {})
        if not naflex and isinstance(size, dict) and size.get("height", image) != image:
            raise ConversionError(f"{name}: preprocessor size {size} differs from the vision image_size {image}")
        if naflex and pre.get("patch_size", patch) != patch:
            raise ConversionError(f"{name}: preprocessor patch_size {pre.get('patch_size')} differs from the vision "
                                  f"patch_size {patch}")
        resample = pre.get("resample", 2)
        if resample not in _RESAMPLE_FROM_HF:
            raise ConversionError(f"{name}: preprocessor resample {resample!r} is not bilinear (2) or bicubic (3)")
        naflex_sizes = dict(resize_mode="naflex", patch_size=patch, max_patches=pre.get("max_num_patches", 256)) \
            if naflex else dict(resize_mode="squash")
        preprocess = PreprocessConfig(
            image_size=image, mean=tuple(pre.get("image_mean", INCEPTION_MEAN)),
            std=tuple(pre.get("image_std", INCEPTION_STD)), interpolation=_RESAMPLE_FROM_HF[resample],
            rgb="white_first", **naflex_sizes,
        )
        embed = t.get("projection_size", text.width)
        if embed != width:
            raise ConversionError(f"{name}: text projection_size {embed} differs from the vision width {width}")
        return ModelConfig(name=name, embed_dim=width, vision=vision, text=text, preprocess=preprocess,
                           tokenizer="external", text_clean="hf-lowercase",
                           init_logit_scale=SIGLIP_INIT_LOGIT_SCALE, init_logit_bias=SIGLIP_INIT_LOGIT_BIAS,
                           max_logit_scale=None)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConversionError):
            raise
        raise ConversionError(f"{name}: config.json does not describe a model dualtower can build ({e})") from e


def check_exportable(cfg: ModelConfig, naflex: bool = False) -> None:
    v, t = cfg.vision, cfg.text
    problems = []
    model = "Siglip2Model" if naflex else "SiglipModel"
    if v is not None and v.naflex != naflex:
        problems.append("a NaFlex vision tower is written as a Siglip2Model" if v.naflex else
                        "Siglip2Model is SigLIP 2's NaFlex model; a fixed-resolution tower is a SiglipModel")
    if t is None:
        problems.append(f"{model} has a text tower")
    else:
        if t.causal or t.pool != "last" or not t.head or not t.head_bias:
            problems.append("text: SigLIP's is bidirectional, pooled at the last token, with a biased projection")
        if cfg.embed_dim != t.width:
            problems.append("text: SigLIP's projection keeps the text width")
    if v.class_token or v.pool != "map" or v.head or not v.patch_bias or v.norm_pre or v.final_norm != "before_pool":
        problems.append("vision: SigLIP's has no class token, MAP pooling after the final norm, no projection")
    for tower, c in (("vision", v), ("text", t)):
        if c is None:
            continue
        if c.norm != "layernorm" or c.post_norm or c.ls_init or c.qk_norm != "none" or c.attn_norm or c.mlp_norm \
                or c.mlp_type != "mlp" or not (c.qkv_bias and c.k_bias and c.proj_bias and c.mlp_bias):
            problems.append(f"{tower}: SigLIP's blocks are plain pre-norm LayerNorm blocks with all biases")
    if cfg.init_logit_bias is None:
        problems.append("SigLIP has a logit bias")
    if cfg.preprocess.resize_mode != ("naflex" if naflex else "squash"):
        problems.append("SigLIP's image processor resizes to a square without cropping" if not naflex else
                        "Siglip2's image processor resizes to a patch budget (resize_mode 'naflex')")
    if problems:
        raise ConversionError(f"{cfg.name} cannot be written as an HF {model}: " + "; ".join(problems))


def config_to_hf(cfg: ModelConfig, naflex: bool = False) -> dict:
    check_exportable(cfg, naflex)
    v, t = cfg.vision, cfg.text
    kind = "siglip2" if naflex else "siglip"
    size = {"num_patches": v.grid * v.grid} if naflex else {"image_size": v.image_size}
    return {
        "architectures": ["Siglip2Model" if naflex else "SiglipModel"],
        "model_type": kind,
        "text_config": {
            "model_type": f"{kind}_text_model", "vocab_size": t.vocab_size, "hidden_size": t.width,
            "intermediate_size": t.mlp_dim, "num_hidden_layers": t.depth, "num_attention_heads": t.heads,
            "max_position_embeddings": t.context_length, "hidden_act": _ACT_TO_HF[t.act],
            "layer_norm_eps": t.norm_eps, "pad_token_id": t.pad_id, "eos_token_id": t.eot_id,
            "projection_size": cfg.embed_dim,
        },
        "vision_config": {
            "model_type": f"{kind}_vision_model", "hidden_size": v.width, "intermediate_size": v.mlp_dim,
            "num_hidden_layers": v.depth, "num_attention_heads": v.heads, "num_channels": 3,
            **size, "patch_size": v.patch_size, "hidden_act": _ACT_TO_HF[v.act],
            "layer_norm_eps": v.norm_eps, "vision_use_head": True,
        },
    }


def preprocessor_to_hf(cfg: ModelConfig) -> dict:
    p = cfg.preprocess
    if p.resize_mode == "naflex":
        return {
            "image_processor_type": "Siglip2ImageProcessor", "do_resize": True,
            "resample": _RESAMPLE_TO_HF[p.interpolation], "patch_size": p.patch_size,
            "max_num_patches": p.max_patches, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": list(p.mean), "image_std": list(p.std),
        }
    return {
        "image_processor_type": "SiglipImageProcessor", "do_resize": True,
        "size": {"height": p.image_size, "width": p.image_size}, "resample": _RESAMPLE_TO_HF[p.interpolation],
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(p.mean), "image_std": list(p.std),
    }


def import_state_dict(state: dict, cfg: ModelConfig, our_keys: set[str], source: str) -> dict[str, torch.Tensor]:
    return to_ours(state, _rules(cfg), our_keys, DROPPED, source)


def export_state_dict(ours: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    check_exportable(cfg)
    return from_ours(ours, _rules(cfg))


class HFSiglip(HFDirectory):
    name = "hf-siglip"
    summary = "a transformers SiglipModel directory (config.json model_type 'siglip')"
    model_types = ("siglip",)
    config_from_hf = staticmethod(config_from_hf)
    to_ours = staticmethod(import_state_dict)
    from_ours = staticmethod(export_state_dict)
    check = staticmethod(check_exportable)

    def hf_files(self, cfg: ModelConfig) -> tuple[dict, dict[str, str]]:
        # The tokenizer files are copied from the model's own when it has them (HFDirectory.write).
        return config_to_hf(cfg), {"preprocessor_config.json": json.dumps(preprocessor_to_hf(cfg), indent=2) + "\n"}


def import_naflex_state_dict(state: dict, cfg: ModelConfig, our_keys: set[str], source: str
                             ) -> dict[str, torch.Tensor]:
    state = dict(state)
    if PATCH_KEY in state:  # (D, p * p * C) over (p, p, C) patches -> the Conv2d's (D, C, p, p)
        p = cfg.vision.patch_size
        w = state[PATCH_KEY]
        if w.ndim != 2 or w.shape[1] != p * p * 3:
            raise ConversionError(f"{source}: {PATCH_KEY} has shape {tuple(w.shape)}, expected (D, {p * p * 3})")
        state[PATCH_KEY] = w.reshape(w.shape[0], p, p, 3).permute(0, 3, 1, 2).contiguous()
    return to_ours(state, _rules(cfg), our_keys, DROPPED, source)


def export_naflex_state_dict(ours: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    check_exportable(cfg, naflex=True)
    out = from_ours(ours, _rules(cfg))
    w = out[PATCH_KEY]
    out[PATCH_KEY] = w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).contiguous()
    return out


FORMAT = register(HFSiglip())


class HFSiglip2(HFDirectory):
    name = "hf-siglip2"
    summary = "a transformers Siglip2Model directory, SigLIP 2 NaFlex (config.json model_type 'siglip2')"
    model_types = ("siglip2",)
    holds_naflex = True
    config_from_hf = staticmethod(config_from_hf)
    to_ours = staticmethod(import_naflex_state_dict)
    from_ours = staticmethod(export_naflex_state_dict)

    def check(self, cfg: ModelConfig) -> None:
        check_exportable(cfg, naflex=True)

    def hf_files(self, cfg: ModelConfig) -> tuple[dict, dict[str, str]]:
        return config_to_hf(cfg, naflex=True), \
            {"preprocessor_config.json": json.dumps(preprocessor_to_hf(cfg), indent=2) + "\n"}


NAFLEX_FORMAT = register(HFSiglip2())
