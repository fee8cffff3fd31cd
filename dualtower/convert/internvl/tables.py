"""InternViT vision towers, in InternVL's own checkpoint layout and in transformers' `InternVLVisionModel`.

Layouts (found by their patch-embedding key under any prefix, e.g. `vision_model.` in an InternVL chat
checkpoint or `model.vision_tower.` in transformers' InternVLModel; keys outside the prefix, the language
model and projector, are not read):
- "internvl": `embeddings.patch_embedding`, `embeddings.class_embedding`, `embeddings.position_embedding`,
  `encoder.layers.N.attn.qkv`, `attn.q_norm`/`k_norm` (full width), `attn.proj`, `norm1`/`norm2`, `ls1`/`ls2`.
- "hf": `embeddings.patch_embeddings.projection`, `embeddings.cls_token`, `embeddings.position_embeddings`,
  `encoder.layer.N.attention.{q,k,v}_proj`, `q_norm`/`k_norm`, `projection_layer`, `layernorm_before`/`_after`,
  `lambda_1`/`lambda_2`.
"""

from __future__ import annotations

import torch

from ...config import IMAGENET_MEAN, IMAGENET_STD, ModelConfig, PreprocessConfig, VisionConfig
from ...errors import UserError
from ..files import Probe
from ..registry import Format, register
from ..remap import ConversionError, Rule, expand, from_ours, rule, to_ours

_OURS = "visual.transformer.blocks.{i}."

_INTERNVL_BLOCK = [
    ("norm1.weight", "norm1.weight"), ("norm1.bias", "norm1.bias"),
    ("attn.qkv.weight", "attn.qkv.weight"), ("attn.qkv.bias", "attn.qkv.bias"),
    ("attn.q_norm.weight", "attn.q_norm.weight"), ("attn.k_norm.weight", "attn.k_norm.weight"),
    ("attn.q_norm.bias", "attn.q_norm.bias"), ("attn.k_norm.bias", "attn.k_norm.bias"),
    ("attn.proj.weight", "attn.proj.weight"), ("attn.proj.bias", "attn.proj.bias"),
    ("ls1.gamma", "ls1"), ("ls2.gamma", "ls2"),
    ("norm2.weight", "norm2.weight"), ("norm2.bias", "norm2.bias"),
    ("mlp.fc1.weight", "mlp.fc1.weight"), ("mlp.fc1.bias", "mlp.fc1.bias"),
    ("mlp.fc2.weight", "mlp.fc2.weight"), ("mlp.fc2.bias", "mlp.fc2.bias"),
]

_HF_BLOCK = [
    ("norm1.weight", "layernorm_before.weight"), ("norm1.bias", "layernorm_before.bias"),
    ("attn.q_norm.weight", "attention.q_norm.weight"), ("attn.k_norm.weight", "attention.k_norm.weight"),
    ("attn.proj.weight", "attention.projection_layer.weight"), ("attn.proj.bias", "attention.projection_layer.bias"),
    ("ls1.gamma", "lambda_1"), ("ls2.gamma", "lambda_2"),
    ("norm2.weight", "layernorm_after.weight"), ("norm2.bias", "layernorm_after.bias"),
    ("mlp.fc1.weight", "mlp.fc1.weight"), ("mlp.fc1.bias", "mlp.fc1.bias"),
    ("mlp.fc2.weight", "mlp.fc2.weight"), ("mlp.fc2.bias", "mlp.fc2.bias"),
]

# InternVL-C's image head (`clip_projector`, an AttentionPoolingBlock beside `vision_model`).
CLIP_HEAD = "clip_projector."
_CLIP_HEAD_RULES = [
    *[rule(f"visual.pool.norm_{x}.{w}", f"{CLIP_HEAD}norm1_{x}.{w}") for x in "qkv" for w in ("weight", "bias")],
    *[rule(f"visual.pool.{x}.weight", f"{CLIP_HEAD}cross_attn.{x}.weight") for x in "qkv"],
    *[rule(f"visual.pool.{x}.bias", f"{CLIP_HEAD}cross_attn.{x}_bias") for x in "qkv"],
    rule("visual.head.weight", f"{CLIP_HEAD}cross_attn.proj.weight"),
    rule("visual.head.bias", f"{CLIP_HEAD}cross_attn.proj.bias"),
]

PATCH_KEYS = {"internvl": "embeddings.patch_embedding.weight", "hf": "embeddings.patch_embeddings.projection.weight"}


def table(layout: str, p: str = "") -> list[Rule]:
    if layout == "internvl":
        return [
            rule("visual.patch_embed.weight", f"{p}embeddings.patch_embedding.weight"),
            rule("visual.patch_embed.bias", f"{p}embeddings.patch_embedding.bias"),
            rule("visual.cls_token", f"{p}embeddings.class_embedding", lead=2),
            rule("visual.pos_embed", f"{p}embeddings.position_embedding", lead=1),
            *[rule(_OURS + o, f"{p}encoder.layers.{{i}}.{t}") for o, t in _INTERNVL_BLOCK],
        ]
    if layout == "hf":
        a = f"{p}encoder.layer.{{i}}.attention."
        return [
            rule("visual.patch_embed.weight", f"{p}embeddings.patch_embeddings.projection.weight"),
            rule("visual.patch_embed.bias", f"{p}embeddings.patch_embeddings.projection.bias"),
            rule("visual.cls_token", f"{p}embeddings.cls_token", lead=2),
            rule("visual.pos_embed", f"{p}embeddings.position_embeddings", lead=1),
            *[rule(_OURS + o, f"{p}encoder.layer.{{i}}.{t}") for o, t in _HF_BLOCK],
            rule(_OURS + "attn.qkv.weight", f"{a}q_proj.weight", f"{a}k_proj.weight", f"{a}v_proj.weight"),
            rule(_OURS + "attn.qkv.bias", f"{a}q_proj.bias", f"{a}k_proj.bias", f"{a}v_proj.bias"),
        ]
    raise UserError(f"unknown InternViT layout {layout!r}")


def find_layout(keys, layout: str | None = None) -> tuple[str, str] | None:
    """(layout, prefix) of the InternViT tower in a state dict (of `layout` when given), or None. The patch
    embedding names the layout; the first block's attention confirms it (HF CLIP shares InternVL's patch key)."""
    confirm = {"internvl": "encoder.layers.0.attn.qkv.weight", "hf": "encoder.layer.0.attention.q_proj.weight"}
    keys = set(keys)
    for key in keys:
        for name, suffix in PATCH_KEYS.items():
            if layout in (None, name) and key.endswith(suffix):
                prefix = key[: -len(suffix)]
                if prefix + confirm[name] in keys:
                    return name, prefix
    return None


def check_config(cfg: ModelConfig) -> None:
    v = cfg.vision
    problems = []
    if cfg.text is not None:
        problems.append("InternViT is a vision-only model")
    clip_head = v.pool == "mean_query" and v.head and v.head_bias
    if not v.class_token or not (v.pool == "cls" and not v.head or clip_head) or v.final_norm != "none" \
            or v.norm_pre or not v.patch_bias:
        problems.append("InternViT has a class token, no pre-norm, no final norm, and either no projection or "
                        "InternVL-C's mean-query attention-pooling head")
    if v.qk_norm == "head" or v.attn_norm or v.mlp_norm or v.mlp_type != "mlp" or not v.ls_init or v.post_norm \
            or not v.k_bias or v.rope:
        problems.append("InternViT blocks: pre-norm, layer scale, full-width QK-norm or none, plain MLP")
    if problems:
        raise ConversionError(f"{cfg.name} is not an InternViT: " + "; ".join(problems))


def import_state_dict(state: dict, cfg: ModelConfig, our_keys: set[str], source: str, layout: str | None = None
                      ) -> dict[str, torch.Tensor]:
    check_config(cfg)
    found = find_layout(state, layout)
    if found is None:
        raise ConversionError(f"{source}: no InternViT patch embedding ({' or '.join(PATCH_KEYS.values())})")
    layout, prefix = found
    clip_head = cfg.vision.pool == "mean_query"
    mine = {k: v for k, v in state.items() if k.startswith(prefix) or clip_head and k.startswith(CLIP_HEAD)}
    rules = table(layout, prefix) + (_CLIP_HEAD_RULES if clip_head else [])
    # transformers' final norm is Identity when use_mean_pooling (InternViT has none); anything else is an error.
    return to_ours(mine, expand(rules, {"visual.": cfg.vision.depth}), our_keys, set(), source)


def export_state_dict(ours: dict[str, torch.Tensor], cfg: ModelConfig, layout: str = "internvl",
                      prefix: str = "") -> dict[str, torch.Tensor]:
    check_config(cfg)
    clip_head = cfg.vision.pool == "mean_query"
    if clip_head and layout != "internvl":
        raise ConversionError(f"{cfg.name}: transformers has no InternVL-C image head; export it with to='internvl'")
    rules = table(layout, prefix) + (_CLIP_HEAD_RULES if clip_head else [])
    return from_ours(ours, expand(rules, {"visual.": cfg.vision.depth}))


def _pair(value, what: str, name: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ConversionError(f"{name}: non-square {what} {value} is not supported")
        value = value[0]
    return int(value)


def config_from_hf(vision: dict, name: str) -> ModelConfig:
    """Our config from transformers' InternVLVisionConfig dict, or InternVL's own InternVisionConfig dict."""
    hf = "layer_scale_init_value" in vision or "use_qk_norm" in vision
    try:
        if hf and not vision.get("use_mean_pooling", True):
            raise ConversionError(f"{name}: use_mean_pooling=False adds a final LayerNorm InternViT does not have")
        width = int(vision.get("hidden_size", 1024))
        image = _pair(vision.get("image_size", 448), "image_size", name)
        norm = {"rms_norm": "rmsnorm", "layer_norm": "layernorm"}.get(vision.get("norm_type", "layer_norm"))
        if norm is None:
            raise ConversionError(f"{name}: norm_type {vision.get('norm_type')!r} is not supported")
        act = vision.get("hidden_act", "gelu")
        if act != "gelu":
            raise ConversionError(f"{name}: hidden_act {act!r} is not supported (InternViT uses gelu)")
        qk_norm = vision.get("use_qk_norm" if hf else "qk_normalization", False)
        v = VisionConfig(
            image_size=image, patch_size=_pair(vision.get("patch_size", 14), "patch_size", name), width=width,
            depth=int(vision.get("num_hidden_layers", 24)), heads=int(vision.get("num_attention_heads", 16)),
            mlp_dim=int(vision.get("intermediate_size", 4 * width)), norm=norm,
            norm_eps=float(vision.get("layer_norm_eps", 1e-6)),
            qkv_bias=bool(vision.get("attention_bias" if hf else "qkv_bias", False)),
            qk_norm="full" if qk_norm else "none",
            ls_init=float(vision.get("layer_scale_init_value" if hf else "initializer_factor", 0.1)),
            patch_bias=True, norm_pre=False, final_norm="none", head=False,
        )
        return ModelConfig(name=name, embed_dim=width, vision=v, text=None,
                           preprocess=PreprocessConfig(image_size=image, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                                       resize_mode="squash",
                                                       rgb="white_first" if hf else "convert_first"))
    except (TypeError, ValueError) as e:
        if isinstance(e, ConversionError):
            raise
        raise ConversionError(f"{name}: vision config does not describe an InternViT dualtower can build ({e})") from e


def config_to_hf(cfg: ModelConfig) -> dict:
    """transformers' InternVLVisionConfig for this tower."""
    check_config(cfg)
    v = cfg.vision
    if v.norm_eps != 1e-6 and v.qk_norm == "full":
        raise ConversionError(f"{cfg.name}: transformers' InternVL QK-norm has eps 1e-6, this tower {v.norm_eps}")
    return {
        "architectures": ["InternVLVisionModel"], "model_type": "internvl_vision", "hidden_size": v.width,
        "num_hidden_layers": v.depth, "num_attention_heads": v.heads, "intermediate_size": v.mlp_dim,
        "attention_bias": v.qkv_bias, "use_qk_norm": v.qk_norm == "full", "hidden_act": "gelu",
        "norm_type": "rms_norm" if v.norm == "rmsnorm" else "layer_norm", "layer_norm_eps": v.norm_eps,
        "image_size": [v.image_size, v.image_size], "patch_size": [v.patch_size, v.patch_size],
        "layer_scale_init_value": v.ls_init, "use_mean_pooling": True, "use_absolute_position_embeddings": True,
    }


class InternVL(Format):
    """InternVL's own layout: its repos' directories (config.json model_type 'internvl_chat', custom code never
    run) and bare state dicts of InternViT or InternVL-C's image side, under any prefix."""

    name = "internvl"
    summary = "InternVL's own layout (embeddings.patch_embedding, encoder.layers.N.attn.qkv; any prefix)"
    vision_only = True
    layout = "internvl"
    model_types = ("internvl_chat", "intern_vit_6b")  # an InternVL chat model; InternViT alone

    def detect(self, probe: Probe) -> bool:
        if probe.is_directory:
            return probe.model_type in self.model_types
        return find_layout(probe.keys, self.layout) is not None

    def read_config(self, probe: Probe, arch: str | None) -> ModelConfig:
        if not probe.is_directory:
            return super().read_config(probe, arch)
        kind = probe.model_type
        vision = probe.config if kind in ("internvl_vision", "intern_vit_6b") else probe.config.get("vision_config")
        if not isinstance(vision, dict):
            raise ConversionError(f"{probe.path}: config.json of model_type {kind!r} has no vision_config")
        return config_from_hf(vision, str(probe.path))

    def to_ours(self, state, cfg, our_keys, source):
        return import_state_dict(state, cfg, our_keys, source, layout=self.layout)

    def from_ours(self, state, cfg):
        return export_state_dict(state, cfg, layout=self.layout)

    check = staticmethod(check_config)


FORMAT = register(InternVL())
