"""HF transformers CLIP-architecture directories, both ways: `CLIPModel` and `MetaClip2Model` (MetaCLIP 2
worldwide), config.json + model.safetensors (or pytorch_model.bin).

MetaClip2Model is CLIPModel's computation with a family's two differences (`Family`): its tokenizer is the
repo's own (XLM-V or mT5, a tokenizer.json transformers runs without any cleaning before it), and its text pools
at the first eos_token_id always, where CLIP keeps the legacy argmax rule for configs that say 2 (XLM-V's end
token is 2: under CLIP's rule it would pool at the largest id)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Family:
    prefix: str  # transformers' class names: {prefix}Model, {prefix}VisionModelWithProjection, ...
    model_type: str
    legacy_argmax: bool  # eos_token_id 2 means: pool at argmax(ids) (CLIP's configs from before transformers 4.31)
    own_tokenizer: bool  # the tokenizer is the directory's tokenizer.json, not the CLIP BPE

    @property
    def model_types(self) -> tuple[str, ...]:
        return (self.model_type, f"{self.model_type}_vision_model", f"{self.model_type}_text_model")

    def text_pool(self, eot: int, vocab: int) -> str:
        """transformers' rule: the first eos_token_id, or position 0 in a row without one (always, when the id
        lies outside the vocabulary); CLIP's legacy configs (eos_token_id 2) argmax(ids) instead (with the CLIP
        vocabulary: the first end-of-text token, the largest id)."""
        if eot == 2 and self.legacy_argmax:
            return "argmax"
        return "eot" if 0 <= eot < vocab else "first"


CLIP = Family("CLIP", "clip", legacy_argmax=True, own_tokenizer=False)
METACLIP2 = Family("MetaClip2", "metaclip_2", legacy_argmax=False, own_tokenizer=True)
MODEL_TYPES = CLIP.model_types


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


def _text(t: dict, name: str, head: bool = True, family: Family = CLIP) -> TextConfig:
    vocab = t.get("vocab_size", CLIP_VOCAB_SIZE)
    eot = t.get("eos_token_id", CLIP_EOT_ID)
    return TextConfig(
        vocab_size=vocab, context_length=t.get("max_position_embeddings", 77), width=t.get("hidden_size", 512),
        depth=t.get("num_hidden_layers", 12), heads=t.get("num_attention_heads", 8),
        mlp_dim=t.get("intermediate_size", 2048), act=_act(t, "text", name), norm_eps=t.get("layer_norm_eps", 1e-5),
        eot_id=eot, pool=family.text_pool(eot, vocab), head=head,
        pad_id=t.get("pad_token_id", 1) if family.own_tokenizer else 0,
    )


def config_from_hf(hf: dict, preprocessor: dict | None, name: str, family: Family = CLIP) -> ModelConfig:
    """Our config from an HF CLIPConfig (MetaClip2Config) dict, or a one-tower vision or text config
    (CLIPVisionModel, CLIPTextModel, with or without their projection), and its preprocessor_config.json when
    there is one."""
    kind = hf.get("model_type")
    if kind not in family.model_types:
        raise ConversionError(f"{name}: config.json has model_type {kind!r}, expected one of {family.model_types}")
    try:
        # A one-tower config holds its tower's fields at the top; the projection only "...WithProjection".
        projected = any("WithProjection" in a for a in hf.get("architectures") or [])
        if kind.endswith("_vision_model"):
            vision, text = _vision(hf, name, head=projected), None
            embed = hf.get("projection_dim", 512) if projected else vision.width
        elif kind.endswith("_text_model"):
            vision, text = None, _text(hf, name, head=projected, family=family)
            embed = hf.get("projection_dim", 512) if projected else text.width
        else:
            vision = _vision(hf.get("vision_config", {}), name)
            text = _text(hf.get("text_config", {}), name, family=family)
            embed = hf.get("projection_dim", 512)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConversionError):
            raise
        raise ConversionError(f"{name}: config.json is not a {family.prefix} config we can build: {e}") from e
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
    # MetaCLIP 2: the directory's tokenizer.json, run as transformers does (its own normaliser, nothing before)
    own = dict(tokenizer="external", text_clean="none") if family.own_tokenizer else {}
    return ModelConfig(
        name=hf.get("_name_or_path") or f"hf-{family.model_type}",
        embed_dim=embed,
        vision=vision,
        text=text,
        preprocess=PreprocessConfig(image_size=image_size, mean=tuple(pre.get("image_mean", OPENAI_MEAN)),
                                    std=tuple(pre.get("image_std", OPENAI_STD)), center_crop="floor",
                                    interpolation="bicubic" if resample == 3 else "bilinear",
                                    crop_pct=crop_pct, rgb="white_first"),
        init_logit_scale=hf.get("logit_scale_init_value", 2.6592),  # transformers' CLIPConfig default
        **own,
    )


def check_exportable(cfg: ModelConfig, family: Family = CLIP) -> None:
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
    if t is not None and t.pool != family.text_pool(t.eot_id, t.vocab_size):
        problems.append(f"text: HF {family.prefix} pools at the first eos_token_id when it is in the vocabulary, "
                        "else at position 0" + (", and at argmax(ids) when eos_token_id is 2" if family.legacy_argmax
                                                else ""))
    if t is not None and (cfg.tokenizer != "clip-bpe") != family.own_tokenizer:
        problems.append("text: a CLIPModel directory carries the CLIP BPE tokenizer; a model with its own "
                        "tokenizer.json (MetaCLIP 2) is a MetaClip2Model" if family is CLIP else
                        "text: a MetaClip2Model directory carries its own tokenizer.json; a CLIP BPE model is a "
                        "CLIPModel")
    if problems:
        raise ConversionError(f"{cfg.name} cannot be written as an HF {family.prefix}Model: " + "; ".join(problems))


def config_to_hf(cfg: ModelConfig, family: Family = CLIP) -> dict:
    v, t = cfg.vision, cfg.text
    if t is None:  # the vision tower alone: CLIPVisionModelWithProjection (CLIPVisionModel without a projection)
        return {"architectures": [f"{family.prefix}VisionModel{'WithProjection' if v.head else ''}"],
                "model_type": f"{family.model_type}_vision_model", **_vision_to_hf(cfg)}
    ids = {"eos_token_id": t.eot_id, "pad_token_id": t.pad_id}
    if not family.own_tokenizer:
        ids["bos_token_id"] = CLIP_SOT_ID
    return {
        "architectures": [f"{family.prefix}Model"],
        "model_type": family.model_type,
        "projection_dim": cfg.embed_dim,
        "logit_scale_init_value": cfg.init_logit_scale,
        "text_config": {
            "vocab_size": t.vocab_size, "max_position_embeddings": t.context_length, "hidden_size": t.width,
            "num_hidden_layers": t.depth, "num_attention_heads": t.heads, "intermediate_size": t.mlp_dim,
            "hidden_act": _ACT_TO_HF[t.act], "layer_norm_eps": t.norm_eps, "projection_dim": cfg.embed_dim, **ids,
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


class HFClip(HFDirectory):
    name = "hf-clip"
    summary = ("a transformers CLIPModel, CLIPVisionModel(WithProjection) or CLIPTextModel(WithProjection) "
               "directory (model_type 'clip', ...)")
    family = CLIP
    to_ours = staticmethod(import_state_dict)

    @property
    def model_types(self) -> tuple[str, ...]:
        return self.family.model_types

    def config_from_hf(self, hf: dict, preprocessor: dict | None, name: str) -> ModelConfig:
        return config_from_hf(hf, preprocessor, name, self.family)

    def from_ours(self, ours: dict, cfg: ModelConfig) -> dict:
        check_exportable(cfg, self.family)
        return from_ours(ours, _rules(cfg))

    def check(self, cfg: ModelConfig) -> None:
        """Both towers: a CLIPModel (MetaClip2Model); the vision tower alone (towers="vision"): a
        CLIPVisionModel(WithProjection), what LLaVA-style stacks and pipeline("image-feature-extraction") load."""
        if cfg.vision is None:
            raise ConversionError(f"{cfg.name}: a one-tower text model is not written as an HF directory (a vision "
                                  "tower alone is: CLIPVisionModelWithProjection); write it as dualtower")
        check_exportable(cfg, self.family)

    def hf_files(self, cfg: ModelConfig) -> tuple[dict, dict[str, str]]:
        from ..tokenizers import get_tokenizer

        files = {"preprocessor_config.json": json.dumps(preprocessor_to_hf(cfg), indent=2) + "\n"}
        if cfg.text is not None and not self.family.own_tokenizer:  # own files: copied by HFDirectory.write
            files.update(get_tokenizer(cfg).hf_files())
        return config_to_hf(cfg, self.family), files


class HFMetaClip2(HFClip):
    name = "hf-metaclip2"
    summary = ("a transformers MetaClip2Model directory (MetaCLIP 2 worldwide, model_type 'metaclip_2', ...) with "
               "its tokenizer.json")
    family = METACLIP2


FORMAT = register(HFClip())
METACLIP2_FORMAT = register(HFMetaClip2())
