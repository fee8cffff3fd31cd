"""HF transformers `CLIPModel` directories: config.json + model.safetensors (or pytorch_model.bin), both ways."""

from __future__ import annotations

import json
import math

import torch

from ..config import (CLIP_EOT_ID, CLIP_SOT_ID, CLIP_VOCAB_SIZE, OPENAI_MEAN, OPENAI_STD, ModelConfig, PreprocessConfig,
                      TextConfig, VisionConfig)
from .registry import HFDirectory, register
from .remap import ConversionError, Rule, expand, from_ours, rule, to_ours

_BLOCK = [
    ("norm1.weight", "layer_norm1.weight"), ("norm1.bias", "layer_norm1.bias"),
    ("attn.proj.weight", "self_attn.out_proj.weight"), ("attn.proj.bias", "self_attn.out_proj.bias"),
    ("norm2.weight", "layer_norm2.weight"), ("norm2.bias", "layer_norm2.bias"),
    ("mlp.fc1.weight", "mlp.fc1.weight"), ("mlp.fc1.bias", "mlp.fc1.bias"),
    ("mlp.fc2.weight", "mlp.fc2.weight"), ("mlp.fc2.bias", "mlp.fc2.bias"),
]


def blocks(ours: str, theirs: str) -> list[Rule]:
    """Rules for HF encoder layers (CLIP and SigLIP share them): separate q/k/v into our fused qkv."""
    attn = f"{theirs}.{{i}}.self_attn"
    return [
        *[rule(f"{ours}.{{i}}.{o}", f"{theirs}.{{i}}.{t}") for o, t in _BLOCK],
        rule(f"{ours}.{{i}}.attn.qkv.weight", f"{attn}.q_proj.weight", f"{attn}.k_proj.weight", f"{attn}.v_proj.weight"),
        rule(f"{ours}.{{i}}.attn.qkv.bias", f"{attn}.q_proj.bias", f"{attn}.k_proj.bias", f"{attn}.v_proj.bias"),
    ]


TABLE: list[Rule] = [
    rule("visual.patch_embed.weight", "vision_model.embeddings.patch_embedding.weight"),
    rule("visual.cls_token", "vision_model.embeddings.class_embedding"),
    rule("visual.pos_embed", "vision_model.embeddings.position_embedding.weight"),
    rule("visual.norm_pre.weight", "vision_model.pre_layrnorm.weight"),
    rule("visual.norm_pre.bias", "vision_model.pre_layrnorm.bias"),
    *blocks("visual.transformer.blocks", "vision_model.encoder.layers"),
    rule("visual.norm_pooled.weight", "vision_model.post_layernorm.weight"),  # HF: pool the class token, then norm
    rule("visual.norm_pooled.bias", "vision_model.post_layernorm.bias"),
    # The same result for a class-token model whose norm runs before pooling (open_clip's layout).
    rule("visual.norm_tokens.weight", "vision_model.post_layernorm.weight"),
    rule("visual.norm_tokens.bias", "vision_model.post_layernorm.bias"),
    rule("visual.head.weight", "visual_projection.weight"),
    rule("text.token_embed.weight", "text_model.embeddings.token_embedding.weight"),
    rule("text.pos_embed", "text_model.embeddings.position_embedding.weight"),
    *blocks("text.transformer.blocks", "text_model.encoder.layers"),
    rule("text.norm.weight", "text_model.final_layer_norm.weight"),
    rule("text.norm.bias", "text_model.final_layer_norm.bias"),
    rule("text.head.weight", "text_projection.weight"),
    rule("logit_scale", "logit_scale"),
]

DROPPED = {"text_model.embeddings.position_ids", "vision_model.embeddings.position_ids"}

_ACT_FROM_HF = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
_ACT_TO_HF = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}


def _rules(cfg: ModelConfig) -> list[Rule]:
    return expand(TABLE, {"visual.": cfg.vision.depth if cfg.vision is not None else 0,
                          "text.": cfg.text.depth if cfg.text is not None else 0})


MODEL_TYPES = ("clip", "clip_vision_model", "clip_text_model")


def _act(c: dict, tower: str, name: str) -> str:
    a = c.get("hidden_act", "quick_gelu")
    if a not in _ACT_FROM_HF:
        raise ConversionError(f"{name}: {tower} hidden_act {a!r} is not supported")
    return _ACT_FROM_HF[a]


def _vision(v: dict, name: str, head: bool = True) -> VisionConfig:
    return VisionConfig(
        image_size=v.get("image_size", 224), patch_size=v.get("patch_size", 32), width=v.get("hidden_size", 768),
        depth=v.get("num_hidden_layers", 12), heads=v.get("num_attention_heads", 12),
        mlp_dim=v.get("intermediate_size", 3072), act=_act(v, "vision", name), norm_eps=v.get("layer_norm_eps", 1e-5),
        final_norm="after_pool", head=head,
    )


def _text(t: dict, name: str, head: bool = True) -> TextConfig:
    vocab = t.get("vocab_size", CLIP_VOCAB_SIZE)
    # transformers' rule: configs from before its PR #24773 say eos_token_id 2 and pool at argmax(ids) (with the
    # CLIP vocabulary: the first end-of-text token, the largest id); others pool at the first eos_token_id, or at
    # position 0 in a row without one (always, when the id lies outside the vocabulary).
    eot = t.get("eos_token_id", CLIP_EOT_ID)
    pool = "argmax" if eot == 2 else "eot" if 0 <= eot < vocab else "first"
    return TextConfig(
        vocab_size=vocab, context_length=t.get("max_position_embeddings", 77), width=t.get("hidden_size", 512),
        depth=t.get("num_hidden_layers", 12), heads=t.get("num_attention_heads", 8),
        mlp_dim=t.get("intermediate_size", 2048), act=_act(t, "text", name), norm_eps=t.get("layer_norm_eps", 1e-5),
        eot_id=eot, pool=pool, head=head,
    )


def config_from_hf(hf: dict, preprocessor: dict | None, name: str) -> ModelConfig:
    """Our config from an HF CLIPConfig dict, or a one-tower CLIPVisionConfig / CLIPTextConfig one
    (CLIPVisionModel, CLIPTextModel, with or without their projection), and its preprocessor_config.json when
    there is one."""
    kind = hf.get("model_type")
    if kind not in MODEL_TYPES:
        raise ConversionError(f"{name}: config.json has model_type {kind!r}, expected one of {MODEL_TYPES}")
    try:
        # A one-tower config holds its tower's fields at the top; the projection only "...WithProjection".
        projected = any("WithProjection" in a for a in hf.get("architectures") or [])
        if kind == "clip_vision_model":
            vision, text = _vision(hf, name, head=projected), None
            embed = hf.get("projection_dim", 512) if projected else vision.width
        elif kind == "clip_text_model":
            vision, text = None, _text(hf, name, head=projected)
            embed = hf.get("projection_dim", 512) if projected else text.width
        else:
            vision, text = _vision(hf.get("vision_config", {}), name), _text(hf.get("text_config", {}), name)
            embed = hf.get("projection_dim", 512)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConversionError):
            raise
        raise ConversionError(f"{name}: config.json is not a CLIP config we can build: {e}") from e
    image_size = vision.image_size if vision is not None else 224
    pre = preprocessor or {}
    crop = pre.get("crop_size", image_size)
    crop = crop.get("height", image_size) if isinstance(crop, dict) else crop
    if crop != image_size:
        raise ConversionError(f"{name}: preprocessor crop_size {crop} differs from the model's image_size {image_size}")
    size = pre.get("size", {"shortest_edge": image_size})
    shortest = size.get("shortest_edge") if isinstance(size, dict) else size
    if not isinstance(shortest, int) or isinstance(shortest, bool) or shortest < image_size:
        raise ConversionError(f"{name}: preprocessor size {size} is not a shortest edge of at least the crop "
                              f"{image_size}")
    resample = pre.get("resample", 3)
    if resample not in (2, 3):
        raise ConversionError(f"{name}: preprocessor resample {resample!r} is not bilinear (2) or bicubic (3)")
    crop_pct = image_size / shortest  # our resize goes to floor(image_size / crop_pct): make that `shortest` exactly
    while math.floor(image_size / crop_pct) != shortest:
        crop_pct = math.nextafter(crop_pct, 0)
    return ModelConfig(
        name=hf.get("_name_or_path") or "hf-clip",
        embed_dim=embed,
        vision=vision,
        text=text,
        preprocess=PreprocessConfig(image_size=image_size, mean=tuple(pre.get("image_mean", OPENAI_MEAN)),
                                    std=tuple(pre.get("image_std", OPENAI_STD)), center_crop="floor",
                                    interpolation="bicubic" if resample == 3 else "bilinear",
                                    crop_pct=crop_pct, rgb="white_first"),
        init_logit_scale=hf.get("logit_scale_init_value", 2.6592),  # transformers' CLIPConfig default
    )


def check_exportable(cfg: ModelConfig) -> None:
    problems = []
    for tower, c in (("vision", cfg.vision), ("text", cfg.text)):
        if c is None:
            continue
        if c.norm != "layernorm" or c.post_norm or c.ls_init:
            problems.append(f"{tower}: HF CLIP blocks are pre-norm LayerNorm without layer scale")
        if not (c.qkv_bias and c.proj_bias and c.mlp_bias) or c.head_bias:
            problems.append(f"{tower}: HF CLIP has all block biases and no projection bias")
    v = cfg.vision
    if v is not None and (v.patch_bias or not v.norm_pre or v.pool != "cls" or v.final_norm == "none"):
        problems.append("vision: HF CLIP has a bias-free patch embedding, a pre-norm, class-token pooling and a final "
                        "norm")
    if cfg.init_logit_bias is not None:
        problems.append("HF CLIP has no logit bias")
    t = cfg.text
    expected = None if t is None else "argmax" if t.eot_id == 2 else "eot" if 0 <= t.eot_id < t.vocab_size else "first"
    if t is not None and t.pool != expected:
        problems.append("text: HF CLIP pools at argmax(ids) when eos_token_id is 2, at the first eos_token_id when "
                        "it is in the vocabulary, else at position 0")
    if problems:
        raise ConversionError(f"{cfg.name} cannot be written as an HF CLIPModel: " + "; ".join(problems))


def config_to_hf(cfg: ModelConfig) -> dict:
    v, t = cfg.vision, cfg.text
    if t is None:  # the vision tower alone: CLIPVisionModelWithProjection (CLIPVisionModel without a projection)
        return {"architectures": ["CLIPVisionModelWithProjection" if v.head else "CLIPVisionModel"],
                "model_type": "clip_vision_model", **_vision_to_hf(cfg)}
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": cfg.embed_dim,
        "logit_scale_init_value": cfg.init_logit_scale,
        "text_config": {
            "vocab_size": t.vocab_size, "max_position_embeddings": t.context_length, "hidden_size": t.width,
            "num_hidden_layers": t.depth, "num_attention_heads": t.heads, "intermediate_size": t.mlp_dim,
            "hidden_act": _ACT_TO_HF[t.act], "layer_norm_eps": t.norm_eps, "projection_dim": cfg.embed_dim,
            "bos_token_id": CLIP_SOT_ID, "eos_token_id": t.eot_id, "pad_token_id": t.pad_id,
        },
        "vision_config": _vision_to_hf(cfg),
    }


def _vision_to_hf(cfg: ModelConfig) -> dict:
    v = cfg.vision
    return {"image_size": v.image_size, "patch_size": v.patch_size, "hidden_size": v.width,
            "num_hidden_layers": v.depth, "num_attention_heads": v.heads, "intermediate_size": v.mlp_dim,
            "hidden_act": _ACT_TO_HF[v.act], "layer_norm_eps": v.norm_eps, "projection_dim": cfg.embed_dim}


def preprocessor_to_hf(cfg: ModelConfig) -> dict:
    p = cfg.preprocess
    return {
        "image_processor_type": "CLIPImageProcessor", "do_resize": True,
        "size": {"shortest_edge": math.floor(p.image_size / p.crop_pct)},
        "resample": 3 if p.interpolation == "bicubic" else 2, "do_center_crop": True,
        "crop_size": {"height": p.image_size, "width": p.image_size}, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": list(p.mean), "image_std": list(p.std), "do_convert_rgb": True,
    }


def import_state_dict(state: dict, cfg: ModelConfig, our_keys: set[str], source: str) -> dict[str, torch.Tensor]:
    # transformers 5 saves a CLIPVisionModel / CLIPTextModel without its `vision_model.` / `text_model.` prefix
    # (4.x, and the ...WithProjection classes, keep it)
    if cfg.text is None and "embeddings.patch_embedding.weight" in state:
        state = {f"vision_model.{k}": v for k, v in state.items()}
    if cfg.vision is None and "embeddings.token_embedding.weight" in state:
        state = {f"text_model.{k}": v for k, v in state.items()}
    return to_ours(state, _rules(cfg), our_keys, DROPPED, source)


def export_state_dict(ours: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    check_exportable(cfg)
    return from_ours(ours, _rules(cfg))


def _check_writable(cfg: ModelConfig) -> None:
    """Both towers: a CLIPModel; the vision tower alone (towers="vision"): a CLIPVisionModel(WithProjection), what
    LLaVA-style stacks and pipeline("image-feature-extraction") load."""
    if cfg.vision is None:
        raise ConversionError(f"{cfg.name}: a one-tower text model is not written as an HF directory (a vision "
                              "tower alone is: CLIPVisionModelWithProjection); write it as dualtower")
    check_exportable(cfg)


class HFClip(HFDirectory):
    name = "hf-clip"
    summary = ("a transformers CLIPModel, CLIPVisionModel(WithProjection) or CLIPTextModel(WithProjection) "
               "directory (model_type 'clip', ...)")
    model_types = MODEL_TYPES
    config_from_hf = staticmethod(config_from_hf)
    to_ours = staticmethod(import_state_dict)
    from_ours = staticmethod(export_state_dict)
    check = staticmethod(_check_writable)

    def hf_files(self, cfg: ModelConfig) -> tuple[dict, dict[str, str]]:
        from ..tokenizers import get_tokenizer

        files = {"preprocessor_config.json": json.dumps(preprocessor_to_hf(cfg), indent=2) + "\n",
                 **(get_tokenizer(cfg).hf_files() if cfg.text is not None else {})}
        return config_to_hf(cfg), files


FORMAT = register(HFClip())
