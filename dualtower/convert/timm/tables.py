"""timm vision transformers (`VisionTransformer` and `Eva`) as vision towers: bare timm state dicts, and the
`visual.trunk.` of open_clip's timm-based models (EVA02-*, *-SigLIP).

Four layouts: "vit" (timm's VisionTransformer: fused qkv, `ls1.gamma`), "eva" (Eva with separate q/k/v
projections, k without bias, `gamma_1`; EVA-02 CLIP), "eva_fused" (Eva with fused qkv and `q_bias`/`v_bias`) and
"eva_rope" (Eva with attn_type='rope': a fused biased qkv, `gamma_1`; Perception Encoder). MobileCLIP-B's
convolutional stem is timm's HybridEmbed backbone (`patch_embed.backbone.N`).

timm's FastViT (MobileCLIP's MCi towers) has the names our convolutional tower has, so its table is our keys
under the prefix (`conv_table`), in either form: training-time branches or folded (`reparam_conv`).
"""

from __future__ import annotations

import torch

from ...config import ConvNeXtConfig, ConvVisionConfig, VisionConfig
from ...errors import UserError
from ..registry import Format, register
from ..remap import ConversionError, Rule, expand, from_ours, rule, to_ours

LAYOUTS = ("vit", "eva", "eva_fused", "eva_rope")

_COMMON_BLOCK = [
    ("norm1.weight", "norm1.weight"), ("norm1.bias", "norm1.bias"),
    ("attn.q_head_norm.weight", "attn.q_norm.weight"), ("attn.q_head_norm.bias", "attn.q_norm.bias"),
    ("attn.k_head_norm.weight", "attn.k_norm.weight"), ("attn.k_head_norm.bias", "attn.k_norm.bias"),
    ("attn.inner_norm.weight", "attn.norm.weight"), ("attn.inner_norm.bias", "attn.norm.bias"),
    ("attn.proj.weight", "attn.proj.weight"), ("attn.proj.bias", "attn.proj.bias"),
    ("norm2.weight", "norm2.weight"), ("norm2.bias", "norm2.bias"),
    ("mlp.fc1.weight", "mlp.fc1.weight"), ("mlp.fc1.bias", "mlp.fc1.bias"),
    ("mlp.fc1_g.weight", "mlp.fc1_g.weight"), ("mlp.fc1_g.bias", "mlp.fc1_g.bias"),
    ("mlp.fc1_x.weight", "mlp.fc1_x.weight"), ("mlp.fc1_x.bias", "mlp.fc1_x.bias"),
    ("mlp.norm.weight", "mlp.norm.weight"), ("mlp.norm.bias", "mlp.norm.bias"),
    ("mlp.fc2.weight", "mlp.fc2.weight"), ("mlp.fc2.bias", "mlp.fc2.bias"),
]

_LAYOUT_BLOCK = {
    "vit": [
        ("attn.qkv.weight", ("attn.qkv.weight",)), ("attn.qkv.bias", ("attn.qkv.bias",)),
        ("ls1.gamma", ("ls1.gamma",)), ("ls2.gamma", ("ls2.gamma",)),
    ],
    "eva": [
        ("attn.qkv.weight", ("attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight")),
        ("attn.qkv.q_bias", ("attn.q_proj.bias",)), ("attn.qkv.v_bias", ("attn.v_proj.bias",)),
        ("ls1.gamma", ("gamma_1",)), ("ls2.gamma", ("gamma_2",)),
    ],
    "eva_fused": [
        ("attn.qkv.weight", ("attn.qkv.weight",)),
        ("attn.qkv.q_bias", ("attn.q_bias",)), ("attn.qkv.v_bias", ("attn.v_bias",)),
        ("ls1.gamma", ("gamma_1",)), ("ls2.gamma", ("gamma_2",)),
    ],
    "eva_rope": [
        ("attn.qkv.weight", ("attn.qkv.weight",)), ("attn.qkv.bias", ("attn.qkv.bias",)),
        ("ls1.gamma", ("gamma_1",)), ("ls2.gamma", ("gamma_2",)),
    ],
}


def table(layout: str, prefix: str = "", ours: str = "visual.") -> list[Rule]:
    """Rules from our vision tower (keys under `ours`) to a timm trunk whose keys start with `prefix`."""
    if layout not in LAYOUTS:
        raise UserError(f"unknown timm layout {layout!r}; known: {LAYOUTS}")
    p, o = prefix, ours
    block = [(a, (b,)) for a, b in _COMMON_BLOCK] + _LAYOUT_BLOCK[layout]
    stem = [rule(f"{o}patch_embed.{j}.{part}", f"{p}patch_embed.backbone.{j}.{part}") for j in (0, 1)
            for part in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                         "bn.num_batches_tracked")]
    stem += [rule(f"{o}patch_embed.2.{part}", f"{p}patch_embed.backbone.2.conv.{part}") for part in ("weight", "bias")]
    return stem + [
        rule(f"{o}patch_embed.weight", f"{p}patch_embed.proj.weight"),
        rule(f"{o}patch_embed.bias", f"{p}patch_embed.proj.bias"),
        rule(f"{o}patch_norm.weight", f"{p}patch_embed.norm.weight"),
        rule(f"{o}patch_norm.bias", f"{p}patch_embed.norm.bias"),
        rule(f"{o}cls_token", f"{p}cls_token", lead=2),
        rule(f"{o}reg_token", f"{p}reg_token", lead=1),
        rule(f"{o}pos_embed", f"{p}pos_embed", lead=1),
        rule(f"{o}norm_pre.weight", f"{p}norm_pre.weight"),
        rule(f"{o}norm_pre.bias", f"{p}norm_pre.bias"),
        *[rule(f"{o}transformer.blocks.{{i}}.{a}", *[f"{p}blocks.{{i}}.{t}" for t in b]) for a, b in block],
        rule(f"{o}norm_tokens.weight", f"{p}norm.weight"),
        rule(f"{o}norm_tokens.bias", f"{p}norm.bias"),
        rule(f"{o}pool.latent", f"{p}attn_pool.latent", lead=2),
        rule(f"{o}pool.qkv.weight", f"{p}attn_pool.q.weight", f"{p}attn_pool.kv.weight", parts=(1, 2)),
        rule(f"{o}pool.qkv.bias", f"{p}attn_pool.q.bias", f"{p}attn_pool.kv.bias", parts=(1, 2)),
        rule(f"{o}pool.proj.weight", f"{p}attn_pool.proj.weight"),
        rule(f"{o}pool.proj.bias", f"{p}attn_pool.proj.bias"),
        rule(f"{o}pool.norm.weight", f"{p}attn_pool.norm.weight"),
        rule(f"{o}pool.norm.bias", f"{p}attn_pool.norm.bias"),
        rule(f"{o}pool.mlp.fc1.weight", f"{p}attn_pool.mlp.fc1.weight"),
        rule(f"{o}pool.mlp.fc1.bias", f"{p}attn_pool.mlp.fc1.bias"),
        rule(f"{o}pool.mlp.fc2.weight", f"{p}attn_pool.mlp.fc2.weight"),
        rule(f"{o}pool.mlp.fc2.bias", f"{p}attn_pool.mlp.fc2.bias"),
        rule(f"{o}norm_pooled.weight", f"{p}fc_norm.weight"),
        rule(f"{o}norm_pooled.bias", f"{p}fc_norm.bias"),
        rule(f"{o}head.weight", f"{p}head.weight"),
        rule(f"{o}head.bias", f"{p}head.bias"),
    ]


def conv_table(keys, prefix: str = "", ours: str = "visual.") -> list[Rule]:
    """A convolutional tower's rules (FastViT, ConvNeXt): each of our keys (under `ours`) is the same key under
    `prefix`."""
    return [rule(k, prefix + k[len(ours):]) for k in sorted(keys) if k.startswith(ours)]


def is_trunk(keys, prefix: str = "") -> bool:
    """Whether the keys under `prefix` are a timm trunk of a kind held here: a ViT or Eva (a patch embedding, by
    one convolution or MobileCLIP-B's backbone, and blocks), a FastViT (a MobileOne stem, either form, and
    stages) or a ConvNeXt (a patchify stem and stages of depthwise blocks)."""
    p = prefix
    embed = (f"{p}patch_embed.proj.weight", f"{p}patch_embed.backbone.0.conv.weight")
    stem = (f"{p}stem.0.identity.weight", f"{p}stem.0.conv_kxk.0.conv.weight", f"{p}stem.0.reparam_conv.weight")
    return (any(k in keys for k in embed) and f"{p}blocks.0.norm1.weight" in keys) or \
        (any(k in keys for k in stem) and f"{p}stages.0.blocks.0.mlp.fc1.weight" in keys) or \
        (f"{p}stem.0.weight" in keys and f"{p}stages.0.blocks.0.conv_dw.weight" in keys)


def layout_of_state(keys, prefix: str = "") -> str:
    """Which timm layout a state dict uses, from its first block's keys."""
    if f"{prefix}blocks.0.attn.q_proj.weight" in keys:
        return "eva"
    if f"{prefix}blocks.0.attn.q_bias" in keys:
        return "eva_fused"
    if f"{prefix}blocks.0.gamma_1" in keys:
        return "eva_rope" if f"{prefix}blocks.0.attn.qkv.bias" in keys else "eva_fused"
    return "vit"


def layout_of_config(v: VisionConfig) -> str:
    """The timm class that builds this tower: EVA's q/v-only bias or sub-LN MLP need `Eva` (unfused, as EVA-02 CLIP);
    rotary embedding with a full qkv bias is Eva's 'rope' attention (Perception Encoder)."""
    if (v.qkv_bias and not v.k_bias) or v.mlp_norm:  # (a SwiGLU alone is VisionTransformer's too: AIMv2)
        return "eva"
    if v.rope:
        return "eva_rope" if v.qkv_bias else "eva"
    return "vit"


# Rotary angles and EVA's zero k bias are computed, not stored; older timm versions saved these buffers.
def dropped(prefix: str, depth: int) -> set[str]:
    return {f"{prefix}rope.pos_embed", *(f"{prefix}blocks.{i}.attn.k_bias" for i in range(depth))}


def import_state_dict(state: dict, cfg, our_keys: set[str], source: str, prefix: str = "") -> dict:
    """A bare timm state dict (keys under `prefix`) into a vision-only model of config `cfg`.

    timm's classifier head is an nn.Linear with a bias; a tower whose projection has none (CLIP ViTs, whose bias
    timm fills with zeros when it converts them) takes the head only when that bias is all zeros."""
    v = cfg.vision
    if isinstance(v, ConvNeXtConfig):
        state = _zero_bias_dropped(state, f"{prefix}head.fc.bias", v, cfg.name, source)
    if isinstance(v, ConvVisionConfig):
        return to_ours(state, conv_table(our_keys, prefix), our_keys, set(), source)
    state = _zero_bias_dropped(state, f"{prefix}head.bias", v, cfg.name, source)
    rules = expand(table(layout_of_state(state, prefix), prefix), {"visual.": v.depth})
    return to_ours(state, rules, our_keys, dropped(prefix, v.depth), source)


def _zero_bias_dropped(state: dict, head_bias: str, v, name: str, source: str) -> dict:
    """timm's classifier always has a bias: dropped where our projection has none, if it is all zeros."""
    if head_bias in state and v.head and not v.head_bias:
        if torch.count_nonzero(state[head_bias]):
            raise ConversionError(f"{source}: {head_bias} is not zero, and {name}'s projection has no bias")
        state = {k: t for k, t in state.items() if k != head_bias}
    return state


def export_state_dict(ours: dict, cfg, prefix: str = "") -> dict:
    if isinstance(cfg.vision, ConvVisionConfig):
        out = from_ours(ours, conv_table(ours, prefix))
        head = f"{prefix}head.fc.weight"
    else:
        out = from_ours(ours, expand(table(layout_of_config(cfg.vision), prefix), {"visual.": cfg.vision.depth}))
        head = f"{prefix}head.weight"
    bias = head[: -len("weight")] + "bias"
    if head in out and bias not in out:  # timm's head always has a bias (see import)
        out[bias] = torch.zeros(out[head].shape[0], dtype=out[head].dtype)
    return out


class Timm(Format):
    name = "timm"
    summary = ("a bare timm VisionTransformer, Eva, FastViT or ConvNeXt state dict (patch_embed, blocks.N; stem, "
               "stages.N), "
               "architecture by arch=")
    vision_only = True
    holds_conv = True

    def detect(self, probe) -> bool:
        return is_trunk(probe.keys)

    to_ours = staticmethod(import_state_dict)

    def check(self, cfg) -> None:
        if isinstance(cfg.vision, ConvNeXtConfig) and len(cfg.vision.dims) != 4:
            raise ConversionError(f"{cfg.name}: timm's ConvNeXt has four stages, this tower {len(cfg.vision.dims)}")
        if isinstance(cfg.vision, ConvVisionConfig):
            return  # timm builds either FastViT form (fastvit_mci*, inference_mode=True when folded); ConvNeXt
        pool = cfg.vision.pool
        if pool not in ("cls", "mean", "map"):  # timm's global_pool: token, avg, map
            raise ConversionError(f"{cfg.name}: timm's VisionTransformer has no {pool!r} pooling (InternVL-C's "
                                  "image head); write it with to='internvl'")
        if cfg.vision.qk_norm != "none":  # InternViT-6B's norms over the whole width: not timm's per-head ones
            raise ConversionError(f"{cfg.name}: its {cfg.vision.qk_norm!r} QK-norm has no place in this timm layout; "
                                  "write it with to='internvl'")

    def from_ours(self, state, cfg):
        return export_state_dict({k: t for k, t in state.items() if k.startswith("visual.")}, cfg)


FORMAT = register(Timm())
