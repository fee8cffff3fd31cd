"""Named architectures: pure data, one registry.

open_clip's ViT configs built from its own VisionTransformer and TextTransformer with the OpenAI tokenizer are
listed under open_clip's names, one row each, and decoded into configs by `_openclip`. The `tiny-*` configs
keep tests fast and cover the options no published config uses.
"""

from __future__ import annotations

import dataclasses

from .config import (IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, SIGLIP_INIT_LOGIT_BIAS,
                     SIGLIP_INIT_LOGIT_SCALE, ModelConfig, PreprocessConfig, TextConfig, VisionConfig)

# name: (embed_dim, image_size, patch, vision width, vision depth, vision head width, vision mlp ratio,
#        text width, text heads, text depth, QuickGELU, vision layer-scale init)
_OPENCLIP_ROWS = {
    "ViT-S-16": (384, 224, 16, 384, 12, 64, 4.0, 384, 6, 12, False, 0.0),
    "ViT-S-32": (384, 224, 32, 384, 12, 64, 4.0, 384, 6, 12, False, 0.0),
    "ViT-S-32-alt": (256, 224, 32, 384, 12, 64, 4.0, 256, 4, 10, False, 0.0),
    "ViT-M-16": (512, 224, 16, 512, 12, 64, 4.0, 512, 8, 12, False, 0.0),
    "ViT-M-16-alt": (384, 224, 16, 512, 12, 64, 4.0, 384, 6, 12, False, 1e-4),
    "ViT-M-32": (512, 224, 32, 512, 12, 64, 4.0, 512, 8, 12, False, 0.0),
    "ViT-M-32-alt": (384, 224, 32, 512, 12, 64, 4.0, 384, 6, 12, False, 0.0),
    "ViT-B-32": (512, 224, 32, 768, 12, 64, 4.0, 512, 8, 12, False, 0.0),
    "ViT-B-32-quickgelu": (512, 224, 32, 768, 12, 64, 4.0, 512, 8, 12, True, 0.0),
    "ViT-B-32-256": (512, 256, 32, 768, 12, 64, 4.0, 512, 8, 12, False, 0.0),
    "ViT-B-32-plus-256": (640, 256, 32, 896, 12, 64, 4.0, 640, 10, 12, False, 0.0),
    "ViT-B-16": (512, 224, 16, 768, 12, 64, 4.0, 512, 8, 12, False, 0.0),
    "ViT-B-16-quickgelu": (512, 224, 16, 768, 12, 64, 4.0, 512, 8, 12, True, 0.0),
    "ViT-B-16-plus": (640, 224, 16, 896, 12, 64, 4.0, 640, 10, 12, False, 0.0),
    "ViT-B-16-plus-240": (640, 240, 16, 896, 12, 64, 4.0, 640, 10, 12, False, 0.0),
    "ViT-L-14": (768, 224, 14, 1024, 24, 64, 4.0, 768, 12, 12, False, 0.0),
    "ViT-L-14-quickgelu": (768, 224, 14, 1024, 24, 64, 4.0, 768, 12, 12, True, 0.0),
    "ViT-L-14-280": (768, 280, 14, 1024, 24, 64, 4.0, 768, 12, 12, False, 0.0),
    "ViT-L-14-336": (768, 336, 14, 1024, 24, 64, 4.0, 768, 12, 12, False, 0.0),
    "ViT-L-14-336-quickgelu": (768, 336, 14, 1024, 24, 64, 4.0, 768, 12, 12, True, 0.0),
    "ViT-L-16": (768, 224, 16, 1024, 24, 64, 4.0, 768, 12, 12, False, 0.0),
    "ViT-L-16-320": (768, 320, 16, 1024, 24, 64, 4.0, 768, 12, 12, False, 0.0),
    "ViT-H-14": (1024, 224, 14, 1280, 32, 80, 4.0, 1024, 16, 24, False, 0.0),
    "ViT-H-14-quickgelu": (1024, 224, 14, 1280, 32, 80, 4.0, 1024, 16, 24, True, 0.0),
    "ViT-H-14-378": (1024, 378, 14, 1280, 32, 80, 4.0, 1024, 16, 24, False, 0.0),
    "ViT-H-14-378-quickgelu": (1024, 378, 14, 1280, 32, 80, 4.0, 1024, 16, 24, True, 0.0),
    "ViT-H-16": (1024, 224, 16, 1280, 32, 80, 4.0, 1024, 16, 24, False, 0.0),
    "ViT-g-14": (1024, 224, 14, 1408, 40, 88, 4.3637, 1024, 16, 24, False, 0.0),
    "ViT-bigG-14": (1280, 224, 14, 1664, 48, 104, 4.9231, 1280, 20, 32, False, 0.0),
    "ViT-bigG-14-quickgelu": (1280, 224, 14, 1664, 48, 104, 4.9231, 1280, 20, 32, True, 0.0),
    "ViT-e-14": (1280, 224, 14, 1792, 56, 112, 8.5715, 1280, 20, 36, False, 0.0),
}


def _openclip(name, embed, image, patch, v_width, v_depth, v_head_width, v_mlp_ratio,
              t_width, t_heads, t_depth, quick_gelu, ls_init) -> ModelConfig:
    act = "quick_gelu" if quick_gelu else "gelu"
    return ModelConfig(
        name=name,
        embed_dim=embed,
        vision=VisionConfig(
            image_size=image, patch_size=patch, width=v_width, depth=v_depth, heads=v_width // v_head_width,
            mlp_dim=int(v_width * v_mlp_ratio), act=act, ls_init=ls_init,
        ),
        text=TextConfig(width=t_width, heads=t_heads, depth=t_depth, mlp_dim=t_width * 4, act=act),
        preprocess=PreprocessConfig(image_size=image),
    )


def _eva02(name, embed, image, patch, width, depth, heads, t_width, t_heads) -> ModelConfig:
    """open_clip's EVA02-* (timm `eva02_*_clip_*` vision trunk, open_clip's text tower)."""
    return ModelConfig(
        name=name,
        embed_dim=embed,
        vision=VisionConfig(
            image_size=image, patch_size=patch, width=width, depth=depth, heads=heads,
            mlp_dim=int(width * 4 * 2 / 3), norm_eps=1e-6, patch_bias=True, norm_pre=False, k_bias=False,
            attn_norm=True, mlp_type="swiglu", mlp_norm=True, rope=True, rope_ref_grid=16, head_bias=True,
        ),
        text=TextConfig(width=t_width, heads=t_heads, depth=12, mlp_dim=4 * t_width),
        preprocess=PreprocessConfig(image_size=image),
    )


def _siglip(name, image, patch, width, depth, heads, mlp_dim, context, vision_act="gelu",
            text: tuple[int, int, int, int] | None = None, gemma: bool = False) -> ModelConfig:
    """open_clip's *-SigLIP and *-SigLIP2 (timm `vit_*_siglip_*` vision trunk with MAP pooling, bidirectional
    text tower pooled at the last token). `text`: (width, depth, heads, mlp_dim) where it differs from the vision
    tower's (ViT-gopt). SigLIP 2 (`gemma`) has the Gemma vocabulary (256,000, pad 0, end 1) and tanh GELU in
    its text tower. The SentencePiece / Gemma tokenizers are not bundled: they come with the model's files, or
    texts come as ids."""
    t_width, t_depth, t_heads, t_mlp = text or (width, depth, heads, mlp_dim)
    return ModelConfig(
        name=name,
        embed_dim=width,
        vision=VisionConfig(
            image_size=image, patch_size=patch, width=width, depth=depth, heads=heads, mlp_dim=mlp_dim,
            act=vision_act, norm_eps=1e-6, patch_bias=True, norm_pre=False, class_token=False, pool="map",
            head=False,
        ),
        text=TextConfig(
            vocab_size=256000 if gemma else 32000, context_length=context, width=t_width, depth=t_depth,
            heads=t_heads, mlp_dim=t_mlp, act="gelu_tanh" if gemma else "gelu", norm_eps=1e-6, causal=False,
            pool="last", head_bias=True, eot_id=1, pad_id=0 if gemma else 1,
        ),
        preprocess=PreprocessConfig(image_size=image, mean=INCEPTION_MEAN, std=INCEPTION_STD, resize_mode="squash"),
        tokenizer="external",
        init_logit_scale=SIGLIP_INIT_LOGIT_SCALE,
        init_logit_bias=SIGLIP_INIT_LOGIT_BIAS,
        max_logit_scale=None,
    )


def _internvit(name, width, depth, heads, mlp_dim, six_b: bool, image: int = 448, clip_head: int = 0
               ) -> ModelConfig:
    """InternViT (InternVL's vision encoder, vision only): layer scale 0.1, no final norm, class token out.
    The 6B uses RMSNorm, QK-norm over the full width and no qkv bias; the 300M LayerNorm with qkv bias.
    `clip_head`: InternVL-C's image head instead (16-head mean-query attention pooling, projected to it)."""
    head = dict(pool="mean_query", pool_heads=16, head=True, head_bias=True) if clip_head else dict(head=False)
    return ModelConfig(
        name=name,
        embed_dim=clip_head or width,
        vision=VisionConfig(
            image_size=image, patch_size=14, width=width, depth=depth, heads=heads, mlp_dim=mlp_dim,
            norm="rmsnorm" if six_b else "layernorm", norm_eps=1e-6, qkv_bias=not six_b,
            qk_norm="full" if six_b else "none", ls_init=0.1, patch_bias=True, norm_pre=False,
            final_norm="none", **head,
        ),
        text=None,
        preprocess=PreprocessConfig(image_size=image, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize_mode="squash"),
    )


# open_clip's SigLIP 2 configs: name: (timm trunk, image_size, patch, width, depth, heads, mlp_dim, vision act,
# text (width, depth, heads, mlp_dim) where it differs from the vision tower's)
_SIGLIP2_ROWS = {
    "ViT-B-16-SigLIP2": ("vit_base_patch16_siglip_224", 224, 16, 768, 12, 12, 3072, "gelu", None),
    "ViT-B-16-SigLIP2-256": ("vit_base_patch16_siglip_256", 256, 16, 768, 12, 12, 3072, "gelu", None),
    "ViT-B-16-SigLIP2-384": ("vit_base_patch16_siglip_384", 384, 16, 768, 12, 12, 3072, "gelu", None),
    "ViT-B-16-SigLIP2-512": ("vit_base_patch16_siglip_512", 512, 16, 768, 12, 12, 3072, "gelu", None),
    "ViT-B-32-SigLIP2-256": ("vit_base_patch32_siglip_256", 256, 32, 768, 12, 12, 3072, "gelu_tanh", None),
    "ViT-L-16-SigLIP2-256": ("vit_large_patch16_siglip_256", 256, 16, 1024, 24, 16, 4096, "gelu", None),
    "ViT-L-16-SigLIP2-384": ("vit_large_patch16_siglip_384", 384, 16, 1024, 24, 16, 4096, "gelu", None),
    "ViT-L-16-SigLIP2-512": ("vit_large_patch16_siglip_512", 512, 16, 1024, 24, 16, 4096, "gelu_tanh", None),
    "ViT-SO400M-14-SigLIP2": ("vit_so400m_patch14_siglip_224", 224, 14, 1152, 27, 16, 4304, "gelu", None),
    "ViT-SO400M-14-SigLIP2-378": ("vit_so400m_patch14_siglip_378", 378, 14, 1152, 27, 16, 4304, "gelu", None),
    "ViT-SO400M-16-SigLIP2-256": ("vit_so400m_patch16_siglip_256", 256, 16, 1152, 27, 16, 4304, "gelu_tanh", None),
    "ViT-SO400M-16-SigLIP2-384": ("vit_so400m_patch16_siglip_384", 384, 16, 1152, 27, 16, 4304, "gelu_tanh", None),
    "ViT-SO400M-16-SigLIP2-512": ("vit_so400m_patch16_siglip_512", 512, 16, 1152, 27, 16, 4304, "gelu_tanh", None),
    "ViT-gopt-16-SigLIP2-256": ("vit_giantopt_patch16_siglip_256", 256, 16, 1536, 40, 16, 6144, "gelu_tanh",
                                (1152, 27, 16, 4304)),
    "ViT-gopt-16-SigLIP2-384": ("vit_giantopt_patch16_siglip_384", 384, 16, 1536, 40, 16, 6144, "gelu_tanh",
                                (1152, 27, 16, 4304)),
}


_FAMILIES = {
    "EVA02-B-16": _eva02("EVA02-B-16", 512, 224, 16, 768, 12, 12, 512, 8),
    "EVA02-L-14": _eva02("EVA02-L-14", 768, 224, 14, 1024, 24, 16, 768, 12),
    "EVA02-L-14-336": _eva02("EVA02-L-14-336", 768, 336, 14, 1024, 24, 16, 768, 12),
    "ViT-B-16-SigLIP": _siglip("ViT-B-16-SigLIP", 224, 16, 768, 12, 12, 3072, 64),
    "ViT-B-16-SigLIP-256": _siglip("ViT-B-16-SigLIP-256", 256, 16, 768, 12, 12, 3072, 64),
    "ViT-B-16-SigLIP-384": _siglip("ViT-B-16-SigLIP-384", 384, 16, 768, 12, 12, 3072, 64),
    "ViT-L-16-SigLIP-256": _siglip("ViT-L-16-SigLIP-256", 256, 16, 1024, 24, 16, 4096, 64),
    "ViT-SO400M-14-SigLIP": _siglip("ViT-SO400M-14-SigLIP", 224, 14, 1152, 27, 16, 4304, 16),
    "ViT-SO400M-14-SigLIP-384": _siglip("ViT-SO400M-14-SigLIP-384", 384, 14, 1152, 27, 16, 4304, 64),
    **{name: _siglip(name, image, patch, width, depth, heads, mlp, 64, act, text, gemma=True)
       for name, (_, image, patch, width, depth, heads, mlp, act, text) in _SIGLIP2_ROWS.items()},
    "InternViT-300M-448px": _internvit("InternViT-300M-448px", 1024, 24, 16, 4096, six_b=False),
    "InternViT-6B-448px": _internvit("InternViT-6B-448px", 3200, 45, 25, 12800, six_b=True),
    # InternVL-C's image side: InternViT-6B-224px (48 blocks) and its attention-pooling head to 768.
    "InternVL-C-vision": _internvit("InternVL-C-vision", 3200, 48, 25, 12800, six_b=True, image=224, clip_head=768),
}


def _tiny(name: str, **vision) -> ModelConfig:
    image = vision.pop("image_size", 32)
    return ModelConfig(
        name=name,
        embed_dim=48,
        vision=VisionConfig(image_size=image, patch_size=8, width=64, depth=2, heads=4, mlp_dim=256, **vision),
        text=TextConfig(width=32, depth=2, heads=2, mlp_dim=128, act=vision.get("act", "gelu")),
        preprocess=PreprocessConfig(image_size=image),
    )


def _tiny_naflex(name: str) -> ModelConfig:
    """A NaFlex vision tower (SigLIP 2's: patch sequences at each image's aspect ratio, MAP pooling) on a 4x4 grid
    of learned positions, with the CLIP text tower."""
    cfg = _tiny(name, class_token=False, pool="map", norm_pre=False, patch_bias=True)
    return cfg.replace(vision=dataclasses.replace(cfg.vision, naflex=True),
                       preprocess=PreprocessConfig(image_size=32, mean=INCEPTION_MEAN, std=INCEPTION_STD,
                                                   interpolation="bilinear", resize_mode="naflex", patch_size=8,
                                                   max_patches=16))


_TINY = {
    "tiny-naflex": _tiny_naflex("tiny-naflex"),
    "tiny": _tiny("tiny"),
    "tiny-quickgelu": _tiny("tiny-quickgelu", act="quick_gelu"),
    "tiny-ls-mean": _tiny("tiny-ls-mean", ls_init=0.1, pool="mean", final_norm="after_pool", image_size=40),
    "tiny-post-rms": _tiny("tiny-post-rms", post_norm=True, norm="rmsnorm", act="gelu_tanh", norm_pre=False,
                           head_bias=True, patch_bias=True),
}

# A small model for the built-in 8x8 digits and 28x28 Fashion-MNIST (upscaled to 32 px, 4x4 patches of 8 px):
# trains on the digits in about a minute on 2 CPU cores.
_SMALL = {
    "small-digits": ModelConfig(
        name="small-digits",
        embed_dim=128,
        vision=VisionConfig(image_size=32, patch_size=8, width=128, depth=3, heads=4, mlp_dim=512),
        text=TextConfig(context_length=32, width=128, depth=3, heads=4, mlp_dim=512),
        preprocess=PreprocessConfig(image_size=32),
    ),
}

REGISTRY: dict[str, ModelConfig] = {**{n: _openclip(n, *row) for n, row in _OPENCLIP_ROWS.items()}, **_FAMILIES,
                                    **_TINY, **_SMALL}


OPENCLIP_NAMES = tuple(_OPENCLIP_ROWS)  # open_clip's own ViT configs
OPENCLIP_TIMM_NAMES = tuple(n for n in _FAMILIES if not n.startswith("Intern"))  # open_clip's timm-trunk configs

# The timm model that builds each architecture's vision tower (timm's hub layout names it in config.json;
# open_clip's timm-trunk configs name it as vision_cfg.timm_model_name).
TIMM_NAMES = {
    "ViT-B-32": "vit_base_patch32_clip_224", "ViT-B-32-quickgelu": "vit_base_patch32_clip_quickgelu_224",
    "ViT-B-16": "vit_base_patch16_clip_224", "ViT-B-16-quickgelu": "vit_base_patch16_clip_quickgelu_224",
    "ViT-L-14": "vit_large_patch14_clip_224", "ViT-L-14-quickgelu": "vit_large_patch14_clip_quickgelu_224",
    "ViT-L-14-336": "vit_large_patch14_clip_336", "ViT-L-14-336-quickgelu": "vit_large_patch14_clip_quickgelu_336",
    "ViT-H-14": "vit_huge_patch14_clip_224", "ViT-H-14-quickgelu": "vit_huge_patch14_clip_quickgelu_224",
    "ViT-H-14-378": "vit_huge_patch14_clip_378", "ViT-bigG-14": "vit_gigantic_patch14_clip_224",
    "EVA02-B-16": "eva02_base_patch16_clip_224", "EVA02-L-14": "eva02_large_patch14_clip_224",
    "EVA02-L-14-336": "eva02_large_patch14_clip_336",
    "ViT-B-16-SigLIP": "vit_base_patch16_siglip_224", "ViT-B-16-SigLIP-256": "vit_base_patch16_siglip_256",
    "ViT-B-16-SigLIP-384": "vit_base_patch16_siglip_384", "ViT-L-16-SigLIP-256": "vit_large_patch16_siglip_256",
    "ViT-SO400M-14-SigLIP": "vit_so400m_patch14_siglip_224",
    "ViT-SO400M-14-SigLIP-384": "vit_so400m_patch14_siglip_384",
    "InternViT-300M-448px": "vit_intern300m_patch14_448",
    **{name: row[0] for name, row in _SIGLIP2_ROWS.items()},
}


def closest(name: str, names, n: int = 3) -> list[str]:
    """The names most like `name` (case aside: vit-b-32 -> ViT-B-32), for an error to suggest."""
    import difflib

    by_lower = {}
    for known in names:
        by_lower.setdefault(known.lower(), known)
    return [by_lower[m] for m in difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=0.6)]


def get_config(name: str) -> ModelConfig:
    if name not in REGISTRY:
        near = closest(name, REGISTRY)
        hint = f"did you mean {' or '.join(near)}?" if near else "none is close"
        raise KeyError(f"unknown architecture {name!r}: {hint} (`dualtower archs` lists all {len(REGISTRY)})")
    return REGISTRY[name]


def config_of(name_or_model) -> ModelConfig:
    """The ModelConfig of an architecture name, a ModelConfig, or a model (anything with `.cfg`)."""
    if isinstance(name_or_model, str):
        return get_config(name_or_model)
    if isinstance(name_or_model, ModelConfig):
        return name_or_model
    return name_or_model.cfg


def list_architectures() -> list[str]:
    return sorted(REGISTRY)
