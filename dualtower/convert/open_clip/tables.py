"""open_clip and OpenAI CLIP state dicts (`open_clip_pytorch_model.bin`, `.safetensors`, OpenAI's state dict).

These files carry no config, so the architecture is named by the caller (`arch="ViT-B-32"`).

Two layouts. open_clip's own VisionTransformer (`visual.conv1`, ...; text tower at the top level), and its
CustomTextCLIP with a timm vision trunk (`visual.trunk.*`, text under `text.`), used by EVA02-* and *-SigLIP.
A config selects the second when its vision tower has what open_clip's own ViT never has: a patch bias (every
timm ViT but PE), rotary embedding or attention pooling (PE, SigLIP), a biased projection (MobileCLIP), or no
ViT at all (MobileCLIP's FastViT).
"""

from __future__ import annotations

import torch

from ...config import ConvNeXtConfig, ConvVisionConfig, FastViTConfig, HFTextConfig, ModelConfig, TextConfig
from .. import files
from ..remap import ConversionError, Rule, expand, from_ours, rule, to_ours
from ..timm import tables as timm_vit

_BLOCK = [
    ("norm1.weight", "ln_1.weight"), ("norm1.bias", "ln_1.bias"),
    ("attn.qkv.weight", "attn.in_proj_weight"), ("attn.qkv.bias", "attn.in_proj_bias"),
    ("attn.proj.weight", "attn.out_proj.weight"), ("attn.proj.bias", "attn.out_proj.bias"),
    ("norm2.weight", "ln_2.weight"), ("norm2.bias", "ln_2.bias"),
    ("mlp.fc1.weight", "mlp.c_fc.weight"), ("mlp.fc1.bias", "mlp.c_fc.bias"),
    ("mlp.fc2.weight", "mlp.c_proj.weight"), ("mlp.fc2.bias", "mlp.c_proj.bias"),
    ("ls1.gamma", "ls_1.gamma"), ("ls2.gamma", "ls_2.gamma"),
]

VISION_TABLE: list[Rule] = [
    rule("visual.patch_embed.weight", "visual.conv1.weight"),
    rule("visual.cls_token", "visual.class_embedding"),
    rule("visual.pos_embed", "visual.positional_embedding"),
    rule("visual.norm_pre.weight", "visual.ln_pre.weight"),
    rule("visual.norm_pre.bias", "visual.ln_pre.bias"),
    *[rule(f"visual.transformer.blocks.{{i}}.{o}", f"visual.transformer.resblocks.{{i}}.{t}") for o, t in _BLOCK],
    rule("visual.norm_tokens.weight", "visual.ln_post.weight"),  # open_clip's default: norm, then pool
    rule("visual.norm_tokens.bias", "visual.ln_post.bias"),
    rule("visual.norm_pooled.weight", "visual.ln_post.weight"),  # final_ln_after_pool=True
    rule("visual.norm_pooled.bias", "visual.ln_post.bias"),
    rule("visual.head.weight", "visual.proj", transpose=True),
]


def text_table(p: str, linear_head: bool) -> list[Rule]:
    """The text tower under prefix `p` ("" in CLIP, "text." in CustomTextCLIP); its projection is a matrix
    (width, embed) or, with a bias, an nn.Linear."""
    if linear_head:
        head = [rule("text.head.weight", f"{p}text_projection.weight"),
                rule("text.head.bias", f"{p}text_projection.bias")]
    else:
        head = [rule("text.head.weight", f"{p}text_projection", transpose=True)]
    return [
        rule("text.token_embed.weight", f"{p}token_embedding.weight"),
        rule("text.pos_embed", f"{p}positional_embedding"),
        *[rule(f"text.transformer.blocks.{{i}}.{o}", f"{p}transformer.resblocks.{{i}}.{t}") for o, t in _BLOCK],
        rule("text.norm.weight", f"{p}ln_final.weight"),
        rule("text.norm.bias", f"{p}ln_final.bias"),
        *head,
        rule("logit_scale", "logit_scale"),
        rule("logit_bias", "logit_bias"),
    ]


def convnext_table(our_keys) -> list[Rule]:
    """open_clip's TimmModel around a ConvNeXt: timm's trunk (our keys, classifier removed) under `visual.trunk.`,
    the projection under `visual.head.`: `proj` (linear), or the MLP `mlp.fc1` (our head.pre_logits.fc) and
    `mlp.fc2` (our head.fc)."""
    mlp = "visual.head.pre_logits.fc.weight" in our_keys
    head = {"visual.head.fc.weight": "visual.head.mlp.fc2.weight" if mlp else "visual.head.proj.weight",
            "visual.head.fc.bias": "visual.head.mlp.fc2.bias" if mlp else "visual.head.proj.bias",
            "visual.head.pre_logits.fc.weight": "visual.head.mlp.fc1.weight",
            "visual.head.pre_logits.fc.bias": "visual.head.mlp.fc1.bias"}
    return [rule(k, head.get(k, "visual.trunk." + k[len("visual."):])) for k in sorted(our_keys)
            if k.startswith("visual.")]


def hf_text_table(our_keys) -> list[Rule]:
    """open_clip's HFTextEncoder: transformers' encoder under `text.transformer.` (ours: `text.encoder.`), the
    projection under `text.proj.` (a Linear, or the MLP's Sequential: proj.0 and proj.2)."""
    rules = [rule(k, "text.transformer." + k[len("text.encoder."):]) for k in sorted(our_keys)
             if k.startswith("text.encoder.")]
    rules += [rule(k, "text.proj." + k[len("text.head."):]) for k in sorted(our_keys) if k.startswith("text.head.")]
    return rules + [rule("logit_scale", "logit_scale"), rule("logit_bias", "logit_bias")]


# Not weights: OpenAI's archives store their hyper-parameters beside the tensors; old open_clip saved the mask.
DROPPED = {"input_resolution", "context_length", "vocab_size", "attn_mask"}


def timm_trunk(cfg: ModelConfig) -> bool:
    v = cfg.vision
    if isinstance(v, ConvVisionConfig):
        return True
    return v.patch_bias or v.rope or v.pool == "map" or v.head_bias


def check_exportable(cfg: ModelConfig) -> None:
    """open_clip's own towers can express only some of our options; the timm trunk the rest of the vision side."""
    problems = []
    if cfg.text is None:
        problems.append("open_clip models have a text tower")
    if isinstance(cfg.vision, ConvVisionConfig) and cfg.vision.folded:
        problems.append("vision: its branches are folded (reparameterized), and open_clip builds the training-time "
                        "form; write the model as loaded, before reparameterize()")
    if isinstance(cfg.vision, ConvNeXtConfig) and len(cfg.vision.dims) != 4:
        problems.append("vision: open_clip's timm ConvNeXt has four stages")
    towers = [("text", cfg.text)] if cfg.text is not None and not isinstance(cfg.text, HFTextConfig) else []
    if not timm_trunk(cfg):
        towers.append(("vision", cfg.vision))
        if cfg.vision.final_norm == "none":
            problems.append("vision: open_clip's ViT always has ln_post")
        if not cfg.vision.head or not cfg.vision.class_token or cfg.vision.pool == "map":
            problems.append("vision: open_clip's ViT has a class token, a projection and cls/mean pooling")
    for tower, c in towers:
        if c.norm != "layernorm" or c.post_norm:
            problems.append(f"{tower}: open_clip blocks are pre-norm LayerNorm")
        if not (c.qkv_bias and c.k_bias and c.proj_bias and c.mlp_bias):
            problems.append(f"{tower}: open_clip blocks have all their biases")
        if c.qk_norm != "none" or c.attn_norm or c.mlp_norm or c.mlp_type != "mlp":
            problems.append(f"{tower}: open_clip blocks have no QK-norm, sub-LN or SwiGLU")
        if c.act == "gelu_tanh" and not timm_trunk(cfg):  # its timm-trunk configs set it by act_kwargs (SigLIP 2)
            problems.append(f"{tower}: open_clip's CLIP towers use GELU or QuickGELU")
    if isinstance(cfg.text, TextConfig) and cfg.text.head_bias and not timm_trunk(cfg):
        problems.append("text: open_clip's CLIP class has no text projection bias")
    if problems:
        raise ConversionError(f"{cfg.name} cannot be written as an open_clip state dict: " + "; ".join(problems))


def _rules(cfg: ModelConfig, state: dict | None = None, our_keys=()) -> list[Rule]:
    """The table for this config. On import two layout variants are read from the state dict itself: the timm
    trunk's block layout, and whether the text tower sits under `text.` (CustomTextCLIP, e.g. a plain ViT built
    with force_custom_text=True) or at the top (CLIP). A transformers text encoder's table follows our keys."""
    if isinstance(cfg.vision, FastViTConfig):
        table, custom_text = timm_vit.conv_table(our_keys, "visual.trunk."), True
    elif isinstance(cfg.vision, ConvNeXtConfig):
        # open_clip builds the convnext_* models as CLIP (text at the top), unless forced to CustomTextCLIP
        table, custom_text = convnext_table(our_keys), state is not None and "text.token_embedding.weight" in state
    elif timm_trunk(cfg):
        layout = timm_vit.layout_of_state(state, "visual.trunk.") if state is not None else \
            timm_vit.layout_of_config(cfg.vision)
        table, custom_text = timm_vit.table(layout, "visual.trunk."), True
    else:
        table, custom_text = list(VISION_TABLE), state is not None and "text.token_embedding.weight" in state
    if isinstance(cfg.text, HFTextConfig):
        table += hf_text_table(our_keys)
    else:
        table += text_table("text." if custom_text else "", linear_head=cfg.text is not None and cfg.text.head_bias)
    depths = {"visual.": cfg.vision.depth, "text.": cfg.text.depth if cfg.text is not None else 0}
    return expand(table, depths)


def unwrap(state: dict, source: str) -> dict[str, torch.Tensor]:
    """A training checkpoint's `state_dict` entry without a `module.` prefix; every entry must be a tensor."""
    state = files.unwrap(state, source)
    bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor) and k not in DROPPED)
    if bad:
        raise ConversionError(f"{source}: entries that are not tensors: {bad[:8]}")
    return state


def import_state_dict(state: dict, cfg: ModelConfig, our_keys: set[str], source: str) -> dict[str, torch.Tensor]:
    state = unwrap(state, source)
    dropped = DROPPED | {f"text.{k}" for k in DROPPED} | timm_vit.dropped("visual.trunk.", cfg.vision.depth)
    return to_ours(state, _rules(cfg, state, our_keys), our_keys, dropped, source)


def export_state_dict(ours: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    check_exportable(cfg)
    return from_ours(ours, _rules(cfg, None, set(ours)))


def check_openai(cfg: ModelConfig) -> None:
    """OpenAI's own loader (`clip.load`, and what builds on it: LlamaIndex's ClipEmbedding) builds every tower with
    QuickGELU from the state dict alone: any other activation would load without a word and compute other
    numbers (cosine 0.9999 on random weights, worse trained), so it is refused."""
    check_exportable(cfg)
    if timm_trunk(cfg):
        raise ConversionError(f"{cfg.name}: OpenAI's CLIP has no timm-trunk vision tower; write it as open_clip")
    other = sorted({c.act for c in (cfg.vision, cfg.text) if c is not None and c.act != "quick_gelu"})
    if other:
        name = cfg.name if cfg.name.endswith("-quickgelu") else f"{cfg.name}-quickgelu"
        raise ConversionError(
            f"{cfg.name} uses {', '.join(other)}, but OpenAI's clip.load builds every tower with QuickGELU and would "
            f"compute other numbers without a word; only a QuickGELU architecture (such as {name}) is written as "
            "openai. Write this one as open_clip (open_clip.create_model names its activation).")
