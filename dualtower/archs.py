"""Named architectures: pure data, one table (`ARCHS`), one keyword entry per architecture.

An entry holds the architecture's config and what other codebases call it: the timm model that builds its vision
tower, how open_clip builds it ("vit": open_clip's own VisionTransformer with the OpenAI tokenizer; "timm": a timm
trunk), and its well-known pretrained weights. `REGISTRY`, `TIMM_NAMES`, the open_clip name lists and
`hub.KNOWN` are views of it. open_clip's ViT sizes are decoded once from `VISION_SIZES` (big_vision's way:
"B" -> width, depth, head width, MLP ratio); its text tower is as wide as the embedding, 64 per head. The
`tiny-*` configs keep tests fast and cover the options no published config uses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .config import (CLIP_INIT_LOGIT_SCALE, IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD,
                     SIGLIP_INIT_LOGIT_BIAS, SIGLIP_INIT_LOGIT_SCALE, HFTextConfig, ModelConfig, PreprocessConfig,
                     TextConfig, VisionConfig)
from .errors import UnknownName, UserError


@dataclass(frozen=True)
class Pretrained:
    """Well-known weights of an architecture: the short name `dualtower.load` takes, its Hub repo, and the layout
    (a format of dualtower.convert) its files are in."""

    name: str
    repo: str
    layout: str


@dataclass(frozen=True)
class Arch:
    config: ModelConfig
    timm: str | None = None  # the timm model that builds its vision tower (timm's hub config.json names it)
    open_clip: str | None = None  # "vit" or "timm": how open_clip builds it; None: open_clip has no such config
    hf_text: str | None = None  # the Hub name of its transformers text encoder (open_clip's text_cfg.hf_model_name)
    pretrained: tuple[Pretrained, ...] = ()

    @property
    def name(self) -> str:
        return self.config.name


# open_clip's ViT sizes: width, depth, head width, MLP ratio
VISION_SIZES = {
    "S": (384, 12, 64, 4.0), "M": (512, 12, 64, 4.0), "B": (768, 12, 64, 4.0), "B-plus": (896, 12, 64, 4.0),
    "L": (1024, 24, 64, 4.0), "H": (1280, 32, 80, 4.0), "g": (1408, 40, 88, 4.3637),
    "bigG": (1664, 48, 104, 4.9231), "e": (1792, 56, 112, 8.5715),
}


def _vit(name: str, size: str, patch: int, embed: int, image: int = 224, text_depth: int = 12,
         quick_gelu: bool = False, ls_init: float = 0.0) -> ModelConfig:
    """open_clip's own ViT configs: a vision tower of a `VISION_SIZES` size, a text tower `embed` wide."""
    width, depth, head_width, mlp_ratio = VISION_SIZES[size]
    act = "quick_gelu" if quick_gelu else "gelu"
    return ModelConfig(
        name=name,
        embed_dim=embed,
        vision=VisionConfig(
            image_size=image, patch_size=patch, width=width, depth=depth, heads=width // head_width,
            mlp_dim=int(width * mlp_ratio), act=act, ls_init=ls_init,
        ),
        text=TextConfig(width=embed, heads=embed // 64, depth=text_depth, mlp_dim=embed * 4, act=act),
        preprocess=PreprocessConfig(image_size=image),
    )


def _worldwide(name: str, size: str, embed: int, text_depth: int, image: int = 224, quick_gelu: bool = False,
               mt5: bool = False) -> ModelConfig:
    """open_clip's ViT-*-worldwide (MetaCLIP 2): open_clip's CLIP towers with a multilingual vocabulary, pooled
    at the first end token: XLM-V's (901,629 pieces, `</s>` 2, pad 1, text cleaned of extra whitespace) or, for
    L/14, mT5's (250,100, `</s>` 1, pad 0, canonicalized). The tokenizer.json comes with the model's files.
    The 378 px configs squash images instead of cropping them."""
    cfg = _vit(name, size, patch=14, embed=embed, image=image, text_depth=text_depth, quick_gelu=quick_gelu)
    vocab, eot, pad, clean = (250100, 1, 0, "canonicalize") if mt5 else (901629, 2, 1, "whitespace")
    return cfg.replace(text=dataclasses.replace(cfg.text, vocab_size=vocab, eot_id=eot, pad_id=pad),
                       tokenizer="external", text_clean=clean,
                       preprocess=dataclasses.replace(cfg.preprocess, resize_mode="squash" if image != 224 else
                                                      "shortest"))


# The transformers encoders open_clip's multilingual configs name, as their public config.json files give them
# (the fields that shape the encoder; dropout and the rest at transformers' defaults, as there).
_XLMR = dict(vocab_size=250002, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, hidden_act="gelu",
             pad_token_id=1, bos_token_id=0, eos_token_id=2)
_NLLB = dict(vocab_size=256206, d_model=1024, encoder_attention_heads=16, decoder_attention_heads=16,
             activation_function="relu", max_position_embeddings=1024, scale_embedding=True, pad_token_id=1,
             bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
_MT5 = dict(vocab_size=250112, d_kv=64, relative_attention_num_buckets=32, relative_attention_max_distance=128,
            feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, tie_word_embeddings=False, pad_token_id=0,
            eos_token_id=1, decoder_start_token_id=0)
HF_TEXT_ENCODERS = {
    "xlm-roberta-base": ("xlm-roberta", dict(_XLMR, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                             intermediate_size=3072)),
    "xlm-roberta-large": ("xlm-roberta", dict(_XLMR, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                              intermediate_size=4096)),
    "facebook/nllb-200-distilled-600M": ("m2m_100", dict(_NLLB, encoder_layers=12, decoder_layers=12,
                                                         encoder_ffn_dim=4096, decoder_ffn_dim=4096)),
    "facebook/nllb-200-distilled-1.3B": ("m2m_100", dict(_NLLB, encoder_layers=24, decoder_layers=24,
                                                         encoder_ffn_dim=8192, decoder_ffn_dim=8192)),
    "google/mt5-base": ("mt5", dict(_MT5, d_model=768, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12)),
    "google/mt5-xl": ("mt5", dict(_MT5, d_model=2048, d_ff=5120, num_layers=24, num_decoder_layers=24, num_heads=32)),
}


def hf_text(hub_name: str, pool: str, proj: str, context: int = 77, **fields) -> HFTextConfig:
    """The text tower of a transformers encoder named as open_clip names it (`fields` override its config)."""
    import json

    kind, base = HF_TEXT_ENCODERS[hub_name]
    return HFTextConfig(model_type=kind, encoder=json.dumps({**base, **fields}), pool=pool, proj=proj,
                        context_length=context)


def _multilingual(name: str, hub_name: str, vision: ModelConfig, embed: int, pool: str, proj: str) -> ModelConfig:
    """open_clip's xlm-roberta-*, nllb-clip-* and mt5-* configs: a vision tower of another config, a transformers
    text encoder (open_clip's HFTextEncoder) pooled by `pool` and projected by `proj`; the repo's own
    tokenizer.json (XLM-R's, NLLB's, mT5's), cleaned of extra whitespace as open_clip's HFTokenizer does."""
    return vision.replace(name=name, embed_dim=embed, text=hf_text(hub_name, pool, proj), tokenizer="external",
                          text_clean="whitespace")


def _nllb_siglip(name: str, vision: ModelConfig, hub_name: str) -> ModelConfig:
    """open_clip's nllb-clip-*-siglip: a SigLIP vision tower (its width the embedding) with NLLB's encoder, pooled
    at its language tag and projected linearly; SigLIP's logit bias, CLIP's initial temperature (the config
    names only the bias), no clamp."""
    return _multilingual(name, hub_name, vision, vision.embed_dim, "cls", "linear").replace(
        init_logit_scale=CLIP_INIT_LOGIT_SCALE, init_logit_bias=-10.0, max_logit_scale=None)


def _eva02(name: str, embed: int, image: int, patch: int, width: int, depth: int, heads: int, text_width: int,
           text_heads: int) -> ModelConfig:
    """open_clip's EVA02-* (timm `eva02_*_clip_*` vision trunk, open_clip's text tower)."""
    return ModelConfig(
        name=name,
        embed_dim=embed,
        vision=VisionConfig(
            image_size=image, patch_size=patch, width=width, depth=depth, heads=heads,
            mlp_dim=int(width * 4 * 2 / 3), norm_eps=1e-6, patch_bias=True, norm_pre=False, k_bias=False,
            attn_norm=True, mlp_type="swiglu", mlp_norm=True, rope=True, rope_ref_grid=16, head_bias=True,
        ),
        text=TextConfig(width=text_width, heads=text_heads, depth=12, mlp_dim=4 * text_width),
        preprocess=PreprocessConfig(image_size=image),
    )


def _siglip(name: str, image: int, patch: int, width: int, depth: int, heads: int, mlp_dim: int, context: int = 64,
            vision_act: str = "gelu", text: tuple[int, int, int, int] | None = None, gemma: bool = False
            ) -> ModelConfig:
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


PE_MEAN = PE_STD = (0.5, 0.5, 0.5)


def _pe_vision(image: int, patch: int, width: int, depth: int, heads: int, mlp_dim: int, class_token: bool = True,
               offset: float = 1.0, **extra) -> VisionConfig:
    """Perception Encoder's trunk (timm `vit_pe_*`, Bolya et al. 2025): no patch bias, a pre-norm, learned
    positions resampled bilinearly, 2-D RoPE counted from 1 (0 for G) with the column first ("xy")."""
    return VisionConfig(
        image_size=image, patch_size=patch, width=width, depth=depth, heads=heads, mlp_dim=mlp_dim,
        class_token=class_token, rope=True, rope_offset=offset, rope_indexing="xy", pos_resize="bilinear", **extra)


def _pe_core(name: str, image: int, patch: int, width: int, depth: int, heads: int, mlp_dim: int, embed: int,
             text: tuple[int, int, int], context: int = 32, class_token: bool = True, offset: float = 1.0
             ) -> ModelConfig:
    """open_clip's PE-Core-*: the PE trunk with an 8-head attention-pool head (MLP 4x) beside the class token
    (G has none) and a biased projection; open_clip's CLIP text tower (`text` width, heads, depth) with a short
    context; images squashed, bilinear, mean and std 0.5."""
    t_width, t_heads, t_depth = text
    return ModelConfig(
        name=name,
        embed_dim=embed,
        vision=_pe_vision(image, patch, width, depth, heads, mlp_dim, class_token, offset, pool="map", pool_heads=8,
                          pool_mlp_dim=4 * width, head_bias=True),
        text=TextConfig(context_length=context, width=t_width, heads=t_heads, depth=t_depth, mlp_dim=4 * t_width,
                        pool="argmax"),
        preprocess=PreprocessConfig(image_size=image, mean=PE_MEAN, std=PE_STD, interpolation="bilinear",
                                    resize_mode="squash"),
    )


def _pe_trunk(name: str, image: int, patch: int, width: int, depth: int, heads: int, mlp_dim: int,
              class_token: bool = True, offset: float = 1.0, ls_init: float = 0.0) -> ModelConfig:
    """PE-Spatial and PE-Lang (timm `vit_pe_spatial_*`, `vit_pe_lang_*`): the PE trunk alone, vision only, for
    features. No final norm, no head; timm pools the mean of the patch tokens. PE-Lang is truncated (its last
    block removed) and, like PE-Spatial-G, has layer scale."""
    return ModelConfig(
        name=name,
        embed_dim=width,
        vision=_pe_vision(image, patch, width, depth, heads, mlp_dim, class_token, offset, pool="mean",
                          final_norm="none", head=False, ls_init=ls_init),
        text=None,
        preprocess=PreprocessConfig(image_size=image, mean=PE_MEAN, std=PE_STD, rgb="convert_first"),
    )


def _aimv2(name: str, image: int, width: int, depth: int, heads: int, mlp_ratio: float) -> ModelConfig:
    """AIMv2 (timm `aimv2_*`, Apple's autoregressive image pretraining): vision only, for features. A patch
    embedding with a bias and an RMSNorm, no class token, RMSNorm blocks without biases and a SwiGLU MLP, the
    final norm then the mean of the patches; OpenAI's statistics, no crop margin."""
    return ModelConfig(
        name=name,
        embed_dim=width,
        vision=VisionConfig(
            image_size=image, patch_size=14, width=width, depth=depth, heads=heads, mlp_dim=int(width * mlp_ratio),
            norm="rmsnorm", patch_bias=True, patch_norm=True, norm_pre=False, class_token=False, qkv_bias=False,
            proj_bias=False, mlp_bias=False, mlp_type="swiglu", pool="mean", head=False),
        text=None,
        preprocess=PreprocessConfig(image_size=image, rgb="convert_first"),
    )


def _tipsv2(name: str, width: int, depth: int, heads: int, mlp_dim: int) -> ModelConfig:
    """TIPSv2's vision towers (timm `vit_*_patch14_reg1_tipsv2`, DINOv2-style): a class token and one register
    token, learned positions for the patches only, layer scale 1, the class token pooled after the final norm;
    pixels scaled to [0, 1] and not normalised; 448 px. Vision only (its text tower is not built)."""
    return ModelConfig(
        name=name,
        embed_dim=width,
        vision=VisionConfig(
            image_size=448, patch_size=14, width=width, depth=depth, heads=heads, mlp_dim=mlp_dim, norm_eps=1e-6,
            patch_bias=True, norm_pre=False, registers=1, pos_prefix=False, ls_init=1.0, head=False),
        text=None,
        preprocess=PreprocessConfig(image_size=448, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), rgb="convert_first"),
    )


def _internvit(name: str, width: int, depth: int, heads: int, mlp_dim: int, six_b: bool, image: int = 448,
               clip_head: int = 0) -> ModelConfig:
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


def _siglip2(name: str, image: int, patch: int, width: int, depth: int, heads: int, mlp_dim: int, act: str,
             text: tuple[int, int, int, int] | None = None) -> ModelConfig:
    """open_clip's *-SigLIP2: SigLIP's towers with the Gemma vocabulary; `text` (width, depth, heads, mlp_dim) where
    the text tower differs from the vision tower (ViT-gopt)."""
    return _siglip(name, image, patch, width, depth, heads, mlp_dim, 64, act, text, gemma=True)


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


def _table(*archs: Arch) -> dict[str, Arch]:
    table = {}
    for arch in archs:
        if arch.name in table:
            raise UserError(f"architecture {arch.name!r} is listed twice")
        table[arch.name] = arch
    return table


ARCHS: dict[str, Arch] = _table(
    Arch(_vit("ViT-S-16", "S", patch=16, embed=384), open_clip="vit"),
    Arch(_vit("ViT-S-32", "S", patch=32, embed=384), open_clip="vit"),
    Arch(_vit("ViT-S-32-alt", "S", patch=32, embed=256, text_depth=10), open_clip="vit"),
    Arch(_vit("ViT-M-16", "M", patch=16, embed=512), open_clip="vit"),
    Arch(_vit("ViT-M-16-alt", "M", patch=16, embed=384, ls_init=0.0001), open_clip="vit"),
    Arch(_vit("ViT-M-32", "M", patch=32, embed=512), open_clip="vit"),
    Arch(_vit("ViT-M-32-alt", "M", patch=32, embed=384), open_clip="vit"),
    Arch(_vit("ViT-B-32", "B", patch=32, embed=512), open_clip="vit", timm="vit_base_patch32_clip_224",
         pretrained=(
             Pretrained("ViT-B-32/laion2b_s34b_b79k", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "open_clip_hub"),
             Pretrained("ViT-B-32/datacomp_xl_s13b_b90k", "laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K", "open_clip_hub"),
         )),
    Arch(_vit("ViT-B-32-quickgelu", "B", patch=32, embed=512, quick_gelu=True), open_clip="vit",
         timm="vit_base_patch32_clip_quickgelu_224",
         pretrained=(
             Pretrained("ViT-B-32/openai", "openai/clip-vit-base-patch32", "hf-clip"),
         )),
    Arch(_vit("ViT-B-32-256", "B", patch=32, embed=512, image=256), open_clip="vit"),
    Arch(_vit("ViT-B-32-plus-256", "B-plus", patch=32, embed=640, image=256), open_clip="vit"),
    Arch(_vit("ViT-B-16", "B", patch=16, embed=512), open_clip="vit", timm="vit_base_patch16_clip_224",
         pretrained=(
             Pretrained("ViT-B-16/laion2b_s34b_b88k", "laion/CLIP-ViT-B-16-laion2B-s34B-b88K", "open_clip_hub"),
             Pretrained("ViT-B-16/datacomp_xl_s13b_b90k", "laion/CLIP-ViT-B-16-DataComp.XL-s13B-b90K", "open_clip_hub"),
         )),
    Arch(_vit("ViT-B-16-quickgelu", "B", patch=16, embed=512, quick_gelu=True), open_clip="vit",
         timm="vit_base_patch16_clip_quickgelu_224",
         pretrained=(
             Pretrained("ViT-B-16/openai", "openai/clip-vit-base-patch16", "hf-clip"),
         )),
    Arch(_vit("ViT-B-16-plus", "B-plus", patch=16, embed=640), open_clip="vit"),
    Arch(_vit("ViT-B-16-plus-240", "B-plus", patch=16, embed=640, image=240), open_clip="vit"),
    Arch(_vit("ViT-L-14", "L", patch=14, embed=768), open_clip="vit", timm="vit_large_patch14_clip_224",
         pretrained=(
             Pretrained("ViT-L-14/laion2b_s32b_b82k", "laion/CLIP-ViT-L-14-laion2B-s32B-b82K", "open_clip_hub"),
             Pretrained("ViT-L-14/datacomp_xl_s13b_b90k", "laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K", "open_clip_hub"),
         )),
    Arch(_vit("ViT-L-14-quickgelu", "L", patch=14, embed=768, quick_gelu=True), open_clip="vit",
         timm="vit_large_patch14_clip_quickgelu_224",
         pretrained=(
             Pretrained("ViT-L-14/openai", "openai/clip-vit-large-patch14", "hf-clip"),
         )),
    Arch(_vit("ViT-L-14-280", "L", patch=14, embed=768, image=280), open_clip="vit"),
    Arch(_vit("ViT-L-14-336", "L", patch=14, embed=768, image=336), open_clip="vit",
         timm="vit_large_patch14_clip_336"),
    Arch(_vit("ViT-L-14-336-quickgelu", "L", patch=14, embed=768, image=336, quick_gelu=True), open_clip="vit",
         timm="vit_large_patch14_clip_quickgelu_336",
         pretrained=(
             Pretrained("ViT-L-14-336/openai", "openai/clip-vit-large-patch14-336", "hf-clip"),
         )),
    Arch(_vit("ViT-L-16", "L", patch=16, embed=768), open_clip="vit"),
    Arch(_vit("ViT-L-16-320", "L", patch=16, embed=768, image=320), open_clip="vit"),
    Arch(_vit("ViT-H-14", "H", patch=14, embed=1024, text_depth=24), open_clip="vit", timm="vit_huge_patch14_clip_224",
         pretrained=(
             Pretrained("ViT-H-14/laion2b_s32b_b79k", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "open_clip_hub"),
         )),
    Arch(_vit("ViT-H-14-quickgelu", "H", patch=14, embed=1024, text_depth=24, quick_gelu=True), open_clip="vit",
         timm="vit_huge_patch14_clip_quickgelu_224"),
    Arch(_vit("ViT-H-14-378", "H", patch=14, embed=1024, image=378, text_depth=24), open_clip="vit",
         timm="vit_huge_patch14_clip_378"),
    Arch(_vit("ViT-H-14-378-quickgelu", "H", patch=14, embed=1024, image=378, text_depth=24, quick_gelu=True),
         open_clip="vit"),
    Arch(_vit("ViT-H-16", "H", patch=16, embed=1024, text_depth=24), open_clip="vit"),
    Arch(_vit("ViT-g-14", "g", patch=14, embed=1024, text_depth=24), open_clip="vit"),
    Arch(_vit("ViT-bigG-14", "bigG", patch=14, embed=1280, text_depth=32), open_clip="vit",
         timm="vit_gigantic_patch14_clip_224",
         pretrained=(
             Pretrained("ViT-bigG-14/laion2b_s39b_b160k", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", "open_clip_hub"),
         )),
    Arch(_vit("ViT-bigG-14-quickgelu", "bigG", patch=14, embed=1280, text_depth=32, quick_gelu=True), open_clip="vit"),
    Arch(_vit("ViT-e-14", "e", patch=14, embed=1280, text_depth=36), open_clip="vit"),
    Arch(_worldwide("ViT-L-14-worldwide", "L", 768, 12, mt5=True), open_clip="vit"),
    Arch(_worldwide("ViT-L-14-worldwide-quickgelu", "L", 768, 12, quick_gelu=True, mt5=True), open_clip="vit"),
    Arch(_worldwide("ViT-H-14-worldwide", "H", 1024, 24), open_clip="vit"),
    Arch(_worldwide("ViT-H-14-worldwide-quickgelu", "H", 1024, 24, quick_gelu=True), open_clip="vit",
         pretrained=(Pretrained("ViT-H-14-worldwide-quickgelu/metaclip2_worldwide",
                                "timm/vit_huge_patch14_clip_224.metaclip2_worldwide", "open_clip_hub"),)),
    Arch(_worldwide("ViT-H-14-worldwide-378", "H", 1024, 24, image=378), open_clip="vit",
         pretrained=(Pretrained("ViT-H-14-worldwide-378/metaclip2_worldwide",
                                "timm/vit_huge_patch14_clip_378.metaclip2_worldwide", "open_clip_hub"),)),
    Arch(_worldwide("ViT-bigG-14-worldwide", "bigG", 1280, 32), open_clip="vit",
         pretrained=(Pretrained("ViT-bigG-14-worldwide/metaclip2_worldwide",
                                "timm/vit_gigantic_patch14_clip_224.metaclip2_worldwide", "open_clip_hub"),)),
    Arch(_worldwide("ViT-bigG-14-worldwide-378", "bigG", 1280, 32, image=378), open_clip="vit",
         pretrained=(Pretrained("ViT-bigG-14-worldwide-378/metaclip2_worldwide",
                                "timm/vit_gigantic_patch14_clip_378.metaclip2_worldwide", "open_clip_hub"),)),
    *[Arch(_multilingual(name, hub_name, _vit("", size, patch=patch, embed=embed), embed, pool, proj),
           open_clip="vit", hf_text=hub_name,
           pretrained=(Pretrained(f"{name}/{tag}", repo, "open_clip_hub"),) if repo else ())
      for name, hub_name, size, patch, embed, pool, proj, tag, repo in (
          ("xlm-roberta-base-ViT-B-32", "xlm-roberta-base", "B", 32, 512, "mean", "mlp", "laion5b_s13b_b90k",
           "laion/CLIP-ViT-B-32-xlm-roberta-base-laion5B-s13B-b90k"),
          ("xlm-roberta-large-ViT-H-14", "xlm-roberta-large", "H", 14, 1024, "mean", "mlp",
           "frozen_laion5b_s13b_b90k", "laion/CLIP-ViT-H-14-frozen-xlm-roberta-large-laion5B-s13B-b90k"),
          ("nllb-clip-base", "facebook/nllb-200-distilled-600M", "B", 32, 512, "cls", "linear", "v1",
           "visheratin/nllb-clip-base-oc"),
          ("nllb-clip-large", "facebook/nllb-200-distilled-1.3B", "H", 14, 1024, "cls", "linear", "v1",
           "visheratin/nllb-clip-large-oc"),
          ("mt5-base-ViT-B-32", "google/mt5-base", "B", 32, 512, "mean", "mlp", None, None),
          ("mt5-xl-ViT-H-14", "google/mt5-xl", "H", 14, 1024, "mean", "mlp", None, None))],
    Arch(_nllb_siglip("nllb-clip-base-siglip", _siglip("", 384, 16, 768, 12, 12, 3072),
                      "facebook/nllb-200-distilled-600M"),
         timm="vit_base_patch16_siglip_384", open_clip="timm", hf_text="facebook/nllb-200-distilled-600M",
         pretrained=(Pretrained("nllb-clip-base-siglip/v1", "visheratin/nllb-clip-base-siglip", "open_clip_hub"),
                     Pretrained("nllb-clip-base-siglip/mrl", "visheratin/nllb-siglip-mrl-base", "open_clip_hub"))),
    Arch(_nllb_siglip("nllb-clip-large-siglip", _siglip("", 384, 14, 1152, 27, 16, 4304),
                      "facebook/nllb-200-distilled-1.3B"),
         timm="vit_so400m_patch14_siglip_384", open_clip="timm", hf_text="facebook/nllb-200-distilled-1.3B",
         pretrained=(Pretrained("nllb-clip-large-siglip/v1", "visheratin/nllb-clip-large-siglip", "open_clip_hub"),
                     Pretrained("nllb-clip-large-siglip/mrl", "visheratin/nllb-siglip-mrl-large", "open_clip_hub"))),
    Arch(_eva02("EVA02-B-16", 512, 224, 16, 768, 12, 12, 512, 8), timm="eva02_base_patch16_clip_224", open_clip="timm",
         pretrained=(Pretrained("EVA02-B-16/merged2b_s8b_b131k", "timm/eva02_base_patch16_clip_224.merged2b_s8b_b131k",
                                "open_clip_hub"),)),
    Arch(_eva02("EVA02-L-14", 768, 224, 14, 1024, 24, 16, 768, 12), timm="eva02_large_patch14_clip_224",
         open_clip="timm", pretrained=(Pretrained("EVA02-L-14/merged2b_s4b_b131k",
                                                  "timm/eva02_large_patch14_clip_224.merged2b_s4b_b131k",
                                                  "open_clip_hub"),)),
    Arch(_eva02("EVA02-L-14-336", 768, 336, 14, 1024, 24, 16, 768, 12), timm="eva02_large_patch14_clip_336",
         open_clip="timm"),
    Arch(_siglip("ViT-B-16-SigLIP", 224, 16, 768, 12, 12, 3072), timm="vit_base_patch16_siglip_224", open_clip="timm",
         pretrained=(Pretrained("ViT-B-16-SigLIP/webli", "google/siglip-base-patch16-224", "hf-siglip"),)),
    Arch(_siglip("ViT-B-16-SigLIP-256", 256, 16, 768, 12, 12, 3072), timm="vit_base_patch16_siglip_256",
         open_clip="timm"),
    Arch(_siglip("ViT-B-16-SigLIP-384", 384, 16, 768, 12, 12, 3072), timm="vit_base_patch16_siglip_384",
         open_clip="timm"),
    Arch(_siglip("ViT-L-16-SigLIP-256", 256, 16, 1024, 24, 16, 4096), timm="vit_large_patch16_siglip_256",
         open_clip="timm",
         pretrained=(Pretrained("ViT-L-16-SigLIP-256/webli", "google/siglip-large-patch16-256", "hf-siglip"),)),
    Arch(_siglip("ViT-SO400M-14-SigLIP", 224, 14, 1152, 27, 16, 4304, context=16),
         timm="vit_so400m_patch14_siglip_224", open_clip="timm"),
    Arch(_siglip("ViT-SO400M-14-SigLIP-384", 384, 14, 1152, 27, 16, 4304), timm="vit_so400m_patch14_siglip_384",
         open_clip="timm", pretrained=(Pretrained("ViT-SO400M-14-SigLIP-384/webli", "google/siglip-so400m-patch14-384",
                                                  "hf-siglip"),)),
    Arch(_siglip2("ViT-B-16-SigLIP2", 224, 16, 768, 12, 12, 3072, "gelu"),
         timm="vit_base_patch16_siglip_224", open_clip="timm",
         pretrained=(Pretrained("ViT-B-16-SigLIP2/webli", "timm/ViT-B-16-SigLIP2", "open_clip_hub"),)),
    Arch(_siglip2("ViT-B-16-SigLIP2-256", 256, 16, 768, 12, 12, 3072, "gelu"),
         timm="vit_base_patch16_siglip_256", open_clip="timm"),
    Arch(_siglip2("ViT-B-16-SigLIP2-384", 384, 16, 768, 12, 12, 3072, "gelu"),
         timm="vit_base_patch16_siglip_384", open_clip="timm"),
    Arch(_siglip2("ViT-B-16-SigLIP2-512", 512, 16, 768, 12, 12, 3072, "gelu"),
         timm="vit_base_patch16_siglip_512", open_clip="timm"),
    Arch(_siglip2("ViT-B-32-SigLIP2-256", 256, 32, 768, 12, 12, 3072, "gelu_tanh"),
         timm="vit_base_patch32_siglip_256", open_clip="timm"),
    Arch(_siglip2("ViT-L-16-SigLIP2-256", 256, 16, 1024, 24, 16, 4096, "gelu"),
         timm="vit_large_patch16_siglip_256", open_clip="timm"),
    Arch(_siglip2("ViT-L-16-SigLIP2-384", 384, 16, 1024, 24, 16, 4096, "gelu"),
         timm="vit_large_patch16_siglip_384", open_clip="timm"),
    Arch(_siglip2("ViT-L-16-SigLIP2-512", 512, 16, 1024, 24, 16, 4096, "gelu_tanh"),
         timm="vit_large_patch16_siglip_512", open_clip="timm"),
    Arch(_siglip2("ViT-SO400M-14-SigLIP2", 224, 14, 1152, 27, 16, 4304, "gelu"),
         timm="vit_so400m_patch14_siglip_224", open_clip="timm",
         pretrained=(Pretrained("ViT-SO400M-14-SigLIP2/webli", "timm/ViT-SO400M-14-SigLIP2", "open_clip_hub"),)),
    Arch(_siglip2("ViT-SO400M-14-SigLIP2-378", 378, 14, 1152, 27, 16, 4304, "gelu"),
         timm="vit_so400m_patch14_siglip_378", open_clip="timm"),
    Arch(_siglip2("ViT-SO400M-16-SigLIP2-256", 256, 16, 1152, 27, 16, 4304, "gelu_tanh"),
         timm="vit_so400m_patch16_siglip_256", open_clip="timm"),
    Arch(_siglip2("ViT-SO400M-16-SigLIP2-384", 384, 16, 1152, 27, 16, 4304, "gelu_tanh"),
         timm="vit_so400m_patch16_siglip_384", open_clip="timm"),
    Arch(_siglip2("ViT-SO400M-16-SigLIP2-512", 512, 16, 1152, 27, 16, 4304, "gelu_tanh"),
         timm="vit_so400m_patch16_siglip_512", open_clip="timm"),
    Arch(_siglip2("ViT-gopt-16-SigLIP2-256", 256, 16, 1536, 40, 16, 6144, "gelu_tanh", text=(1152, 27, 16, 4304)),
         timm="vit_giantopt_patch16_siglip_256", open_clip="timm"),
    Arch(_siglip2("ViT-gopt-16-SigLIP2-384", 384, 16, 1536, 40, 16, 6144, "gelu_tanh", text=(1152, 27, 16, 4304)),
         timm="vit_giantopt_patch16_siglip_384", open_clip="timm"),
    Arch(_pe_core("PE-Core-T-16-384", 384, 16, 192, 12, 3, 768, 512, (512, 8, 12)),
         timm="vit_pe_core_tiny_patch16_384", open_clip="timm",
         pretrained=(Pretrained("PE-Core-T-16-384/meta", "timm/PE-Core-T-16-384", "open_clip_hub"),)),
    Arch(_pe_core("PE-Core-S-16-384", 384, 16, 384, 12, 6, 1536, 512, (512, 8, 12)),
         timm="vit_pe_core_small_patch16_384", open_clip="timm",
         pretrained=(Pretrained("PE-Core-S-16-384/meta", "timm/PE-Core-S-16-384", "open_clip_hub"),)),
    Arch(_pe_core("PE-Core-B-16", 224, 16, 768, 12, 12, 3072, 1024, (1024, 16, 24)),
         timm="vit_pe_core_base_patch16_224", open_clip="timm",
         pretrained=(Pretrained("PE-Core-B-16/meta", "timm/PE-Core-B-16", "open_clip_hub"),)),
    Arch(_pe_core("PE-Core-L-14-336", 336, 14, 1024, 24, 16, 4096, 1024, (1024, 16, 24)),
         timm="vit_pe_core_large_patch14_336", open_clip="timm",
         pretrained=(Pretrained("PE-Core-L-14-336/meta", "timm/PE-Core-L-14-336", "open_clip_hub"),)),
    Arch(_pe_core("PE-Core-bigG-14-448", 448, 14, 1536, 50, 16, 8960, 1280, (1280, 20, 24), context=72,
                  class_token=False, offset=0.0),
         timm="vit_pe_core_gigantic_patch14_448", open_clip="timm",
         pretrained=(Pretrained("PE-Core-bigG-14-448/meta", "timm/PE-Core-bigG-14-448", "open_clip_hub"),)),
    *[Arch(_pe_trunk(f"PE-Spatial-{size}-16-512", 512, 16, width, 12, heads, 4 * width),
           timm=f"vit_pe_spatial_{timm_size}_patch16_512",
           pretrained=(Pretrained(f"PE-Spatial-{size}-16-512/meta", f"timm/vit_pe_spatial_{timm_size}_patch16_512.fb",
                                  "timm_hub"),))
      for size, timm_size, width, heads in (("T", "tiny", 192, 3), ("S", "small", 384, 6), ("B", "base", 768, 12))],
    Arch(_pe_trunk("PE-Spatial-L-14-448", 448, 14, 1024, 24, 16, 4096), timm="vit_pe_spatial_large_patch14_448",
         pretrained=(Pretrained("PE-Spatial-L-14-448/meta", "timm/vit_pe_spatial_large_patch14_448.fb", "timm_hub"),)),
    Arch(_pe_trunk("PE-Spatial-G-14-448", 448, 14, 1536, 50, 16, 8960, class_token=False, offset=0.0, ls_init=0.1),
         timm="vit_pe_spatial_gigantic_patch14_448",
         pretrained=(Pretrained("PE-Spatial-G-14-448/meta", "timm/vit_pe_spatial_gigantic_patch14_448.fb",
                                "timm_hub"),)),
    Arch(_pe_trunk("PE-Lang-L-14-448", 448, 14, 1024, 23, 16, 4096, ls_init=0.1), timm="vit_pe_lang_large_patch14_448",
         pretrained=(Pretrained("PE-Lang-L-14-448/meta", "timm/vit_pe_lang_large_patch14_448.fb", "timm_hub"),
                     Pretrained("PE-Lang-L-14-448/meta_tiling", "timm/vit_pe_lang_large_patch14_448.fb_tiling",
                                "timm_hub"))),
    Arch(_pe_trunk("PE-Lang-G-14-448", 448, 14, 1536, 47, 16, 8960, class_token=False, offset=0.0, ls_init=0.1),
         timm="vit_pe_lang_gigantic_patch14_448",
         pretrained=(Pretrained("PE-Lang-G-14-448/meta", "timm/vit_pe_lang_gigantic_patch14_448.fb", "timm_hub"),
                     Pretrained("PE-Lang-G-14-448/meta_tiling", "timm/vit_pe_lang_gigantic_patch14_448.fb_tiling",
                                "timm_hub"))),
    *[Arch(_aimv2(f"AIMv2-{size}-14-{image}", image, width, depth, heads, ratio),
           timm=f"aimv2_{timm_size}_patch14_{image}",
           pretrained=(Pretrained(f"AIMv2-{size}-14-{image}/apple_pt",
                                  f"timm/aimv2_{timm_size}_patch14_{image}.apple_pt", "timm_hub"),))
      for size, timm_size, width, depth, heads, ratio in (("L", "large", 1024, 24, 8, 2.75),
                                                          ("H", "huge", 1536, 24, 12, 2.6667),
                                                          ("1B", "1b", 2048, 24, 16, 2.75),
                                                          ("3B", "3b", 3072, 24, 24, 2.6667))
      for image in (224, 336, 448)],
    *[Arch(_tipsv2(f"TIPSv2-{size}-14", width, depth, heads, mlp_dim), timm=f"vit_{timm_size}_patch14_reg1_tipsv2",
           pretrained=(Pretrained(f"TIPSv2-{size}-14/webli", f"timm/vit_{timm_size}_patch14_reg1_tipsv2.webli",
                                  "timm_hub"),))
      for size, timm_size, width, depth, heads, mlp_dim in (("B", "base", 768, 12, 12, 3072),
                                                            ("L", "large", 1024, 24, 16, 4096),
                                                            ("SO400M", "so400m", 1152, 27, 16, 4304))],
    Arch(_internvit("InternViT-300M-448px", 1024, 24, 16, 4096, six_b=False), timm="vit_intern300m_patch14_448",
         pretrained=(Pretrained("InternViT-300M-448px/opengvlab", "OpenGVLab/InternViT-300M-448px", "internvl"),)),
    Arch(_internvit("InternViT-6B-448px", 3200, 45, 25, 12800, six_b=True),
         pretrained=(Pretrained("InternViT-6B-448px/v1-5", "OpenGVLab/InternViT-6B-448px-V1-5", "internvl"),)),
    # InternVL-C's image side: InternViT-6B-224px (48 blocks) and its attention-pooling head to 768.
    Arch(_internvit("InternVL-C-vision", 3200, 48, 25, 12800, six_b=True, image=224, clip_head=768),
         pretrained=(Pretrained("InternVL-C-vision/internvl-14b-224px", "OpenGVLab/InternVL-14B-224px", "internvl"),)),
    Arch(_tiny_naflex("tiny-naflex")),
    Arch(_tiny("tiny")),
    Arch(_tiny("tiny-quickgelu", act="quick_gelu")),
    Arch(_tiny("tiny-ls-mean", ls_init=0.1, pool="mean", final_norm="after_pool", image_size=40)),
    Arch(_tiny("tiny-post-rms", post_norm=True, norm="rmsnorm", act="gelu_tanh", norm_pre=False, head_bias=True,
               patch_bias=True)),
    # A small model for the built-in 8x8 digits and 28x28 Fashion-MNIST (upscaled to 32 px, 4x4 patches of 8 px):
    # trains on the digits in about a minute on 2 CPU cores.
    Arch(ModelConfig(
        name="small-digits",
        embed_dim=128,
        vision=VisionConfig(image_size=32, patch_size=8, width=128, depth=3, heads=4, mlp_dim=512),
        text=TextConfig(context_length=32, width=128, depth=3, heads=4, mlp_dim=512),
        preprocess=PreprocessConfig(image_size=32),
    )),
)

# Views of the table
REGISTRY: dict[str, ModelConfig] = {name: arch.config for name, arch in ARCHS.items()}
OPENCLIP_NAMES = tuple(n for n, a in ARCHS.items() if a.open_clip == "vit")  # open_clip's own ViT configs
OPENCLIP_TIMM_NAMES = tuple(n for n, a in ARCHS.items() if a.open_clip == "timm")  # its timm-trunk configs
TIMM_NAMES = {name: arch.timm for name, arch in ARCHS.items() if arch.timm is not None}
PRETRAINED = {p.name: (name, p) for name, arch in ARCHS.items() for p in arch.pretrained}  # short name -> (arch, p)


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
        raise UnknownName(f"unknown architecture {name!r}: {hint} (`dualtower archs` lists all {len(REGISTRY)})")
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
