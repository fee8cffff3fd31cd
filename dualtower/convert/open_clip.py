"""open_clip and OpenAI CLIP state dicts (`open_clip_pytorch_model.bin`, `.safetensors`, OpenAI's state dict).

These files carry no config, so the architecture is named by the caller (`arch="ViT-B-32"`).
"""

from __future__ import annotations

import torch

from ..config import ModelConfig
from .remap import ConversionError, Rule, expand, from_ours, rule, to_ours

_BLOCK = [
    ("norm1.weight", "ln_1.weight"), ("norm1.bias", "ln_1.bias"),
    ("attn.qkv.weight", "attn.in_proj_weight"), ("attn.qkv.bias", "attn.in_proj_bias"),
    ("attn.proj.weight", "attn.out_proj.weight"), ("attn.proj.bias", "attn.out_proj.bias"),
    ("norm2.weight", "ln_2.weight"), ("norm2.bias", "ln_2.bias"),
    ("mlp.fc1.weight", "mlp.c_fc.weight"), ("mlp.fc1.bias", "mlp.c_fc.bias"),
    ("mlp.fc2.weight", "mlp.c_proj.weight"), ("mlp.fc2.bias", "mlp.c_proj.bias"),
    ("ls1.gamma", "ls_1.gamma"), ("ls2.gamma", "ls_2.gamma"),
]

TABLE: list[Rule] = [
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
    rule("text.token_embed.weight", "token_embedding.weight"),
    rule("text.pos_embed", "positional_embedding"),
    *[rule(f"text.transformer.blocks.{{i}}.{o}", f"transformer.resblocks.{{i}}.{t}") for o, t in _BLOCK],
    rule("text.norm.weight", "ln_final.weight"),
    rule("text.norm.bias", "ln_final.bias"),
    rule("text.head.weight", "text_projection", transpose=True),
    rule("logit_scale", "logit_scale"),
    rule("logit_bias", "logit_bias"),
]

# Not weights: OpenAI's archives store their hyper-parameters beside the tensors; old open_clip saved the mask.
DROPPED = {"input_resolution", "context_length", "vocab_size", "attn_mask"}


def check_exportable(cfg: ModelConfig) -> None:
    """open_clip's VisionTransformer/TextTransformer can express only some of our options."""
    problems = []
    for tower, c in (("vision", cfg.vision), ("text", cfg.text)):
        if c.norm != "layernorm" or c.post_norm:
            problems.append(f"{tower}: open_clip blocks are pre-norm LayerNorm")
        if not (c.qkv_bias and c.proj_bias and c.mlp_bias) or c.head_bias:
            problems.append(f"{tower}: open_clip has all block biases and no projection bias")
        if c.act == "gelu_tanh":
            problems.append(f"{tower}: open_clip's ViT uses GELU or QuickGELU")
    if cfg.vision.patch_bias:
        problems.append("vision: open_clip's patch embedding has no bias")
    if cfg.vision.final_norm == "none":
        problems.append("vision: open_clip always has ln_post")
    if problems:
        raise ConversionError(f"{cfg.name} cannot be written as an open_clip state dict: " + "; ".join(problems))


def _rules(cfg: ModelConfig) -> list[Rule]:
    return expand(TABLE, {"visual.": cfg.vision.depth, "text.": cfg.text.depth})


def unwrap(state: dict, source: str) -> dict[str, torch.Tensor]:
    """A training checkpoint's `state_dict` entry, with a DistributedDataParallel `module.` prefix removed."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor) and k not in DROPPED)
    if bad:
        raise ConversionError(f"{source}: entries that are not tensors: {bad[:8]}")
    return state


def import_state_dict(state: dict, cfg: ModelConfig, our_keys: set[str], source: str) -> dict[str, torch.Tensor]:
    return to_ours(unwrap(state, source), _rules(cfg), our_keys, DROPPED, source)


def export_state_dict(ours: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    check_exportable(cfg)
    return from_ours(ours, _rules(cfg))
