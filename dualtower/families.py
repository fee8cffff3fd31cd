"""The families' config builders that `archs.ARCHS` is written with: pure functions from a family's few
numbers to a ModelConfig (open_clip's ViTs and MetaCLIP 2, MobileCLIP, LAION's ConvNeXt CLIP, EVA-02, SigLIP and SigLIP 2, Perception Encoder,
AIMv2, TIPSv2, InternViT, the multilingual towers' transformers encoders, the tiny test configs). A new family
is one builder here and its rows in `archs.ARCHS`."""

from __future__ import annotations

import dataclasses

from .config import (CLIP_INIT_LOGIT_SCALE, IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, OPENAI_MEAN,
                     OPENAI_STD, SIGLIP_INIT_LOGIT_BIAS, SIGLIP_INIT_LOGIT_SCALE, ConvNeXtConfig, FastViTConfig,
                     HFTextConfig,
                     ModelConfig, PreprocessConfig, TextConfig, VisionConfig)


# open_clip's ViT sizes: width, depth, head width, MLP ratio
VISION_SIZES = {
    "S": (384, 12, 64, 4.0), "M": (512, 12, 64, 4.0), "B": (768, 12, 64, 4.0), "B-plus": (896, 12, 64, 4.0),
    "L": (1024, 24, 64, 4.0), "H": (1280, 32, 80, 4.0), "g": (1408, 40, 88, 4.3637),
    "bigG": (1664, 48, 104, 4.9231), "e": (1792, 56, 112, 8.5715),
}


def vit(name: str, size: str, patch: int, embed: int, image: int = 224, text_depth: int = 12,
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


def worldwide(name: str, size: str, embed: int, text_depth: int, image: int = 224, quick_gelu: bool = False,
               mt5: bool = False) -> ModelConfig:
    """open_clip's ViT-*-worldwide (MetaCLIP 2): open_clip's CLIP towers with a multilingual vocabulary, pooled
    at the first end token: XLM-V's (901,629 pieces, `</s>` 2, pad 1, text cleaned of extra whitespace) or, for
    L/14, mT5's (250,100, `</s>` 1, pad 0, canonicalized). The tokenizer.json comes with the model's files.
    The 378 px configs squash images instead of cropping them."""
    cfg = vit(name, size, patch=14, embed=embed, image=image, text_depth=text_depth, quick_gelu=quick_gelu)
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


def multilingual(name: str, hub_name: str, vision: ModelConfig, embed: int, pool: str, proj: str) -> ModelConfig:
    """open_clip's xlm-roberta-*, nllb-clip-* and mt5-* configs: a vision tower of another config, a transformers
    text encoder (open_clip's HFTextEncoder) pooled by `pool` and projected by `proj`; the repo's own
    tokenizer.json (XLM-R's, NLLB's, mT5's), cleaned of extra whitespace as open_clip's HFTokenizer does."""
    return vision.replace(name=name, embed_dim=embed, text=hf_text(hub_name, pool, proj), tokenizer="external",
                          text_clean="whitespace")


def nllb_siglip(name: str, vision: ModelConfig, hub_name: str) -> ModelConfig:
    """open_clip's nllb-clip-*-siglip: a SigLIP vision tower (its width the embedding) with NLLB's encoder, pooled
    at its language tag and projected linearly; SigLIP's logit bias, CLIP's initial temperature (the config
    names only the bias), no clamp."""
    return multilingual(name, hub_name, vision, vision.embed_dim, "cls", "linear").replace(
        init_logit_scale=CLIP_INIT_LOGIT_SCALE, init_logit_bias=-10.0, max_logit_scale=None)


def eva02(name: str, embed: int, image: int, patch: int, width: int, depth: int, heads: int, text_width: int,
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


def siglip(name: str, image: int, patch: int, width: int, depth: int, heads: int, mlp_dim: int, context: int = 64,
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


def pe_vision(image: int, patch: int, width: int, depth: int, heads: int, mlp_dim: int, class_token: bool = True,
               offset: float = 1.0, **extra) -> VisionConfig:
    """Perception Encoder's trunk (timm `vit_pe_*`, Bolya et al. 2025): no patch bias, a pre-norm, learned
    positions resampled bilinearly, 2-D RoPE counted from 1 (0 for G) with the column first ("xy")."""
    return VisionConfig(
        image_size=image, patch_size=patch, width=width, depth=depth, heads=heads, mlp_dim=mlp_dim,
        class_token=class_token, rope=True, rope_offset=offset, rope_indexing="xy", pos_resize="bilinear", **extra)


def pe_core(name: str, image: int, patch: int, width: int, depth: int, heads: int, mlp_dim: int, embed: int,
             text: tuple[int, int, int], context: int = 32, class_token: bool = True, offset: float = 1.0
             ) -> ModelConfig:
    """open_clip's PE-Core-*: the PE trunk with an 8-head attention-pool head (MLP 4x) beside the class token
    (G has none) and a biased projection; open_clip's CLIP text tower (`text` width, heads, depth) with a short
    context; images squashed, bilinear, mean and std 0.5."""
    t_width, t_heads, t_depth = text
    return ModelConfig(
        name=name,
        embed_dim=embed,
        vision=pe_vision(image, patch, width, depth, heads, mlp_dim, class_token, offset, pool="map", pool_heads=8,
                          pool_mlp_dim=4 * width, head_bias=True),
        text=TextConfig(context_length=context, width=t_width, heads=t_heads, depth=t_depth, mlp_dim=4 * t_width,
                        pool="argmax"),
        preprocess=PreprocessConfig(image_size=image, mean=PE_MEAN, std=PE_STD, interpolation="bilinear",
                                    resize_mode="squash"),
    )


def pe_trunk(name: str, image: int, patch: int, width: int, depth: int, heads: int, mlp_dim: int,
              class_token: bool = True, offset: float = 1.0, ls_init: float = 0.0) -> ModelConfig:
    """PE-Spatial and PE-Lang (timm `vit_pe_spatial_*`, `vit_pe_lang_*`): the PE trunk alone, vision only, for
    features. No final norm, no head; timm pools the mean of the patch tokens. PE-Lang is truncated (its last
    block removed) and, like PE-Spatial-G, has layer scale."""
    return ModelConfig(
        name=name,
        embed_dim=width,
        vision=pe_vision(image, patch, width, depth, heads, mlp_dim, class_token, offset, pool="mean",
                          final_norm="none", head=False, ls_init=ls_init),
        text=None,
        preprocess=PreprocessConfig(image_size=image, mean=PE_MEAN, std=PE_STD, rgb="convert_first"),
    )


def aimv2(name: str, image: int, width: int, depth: int, heads: int, mlp_ratio: float) -> ModelConfig:
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


def tipsv2(name: str, width: int, depth: int, heads: int, mlp_dim: int) -> ModelConfig:
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


def internvit(name: str, width: int, depth: int, heads: int, mlp_dim: int, six_b: bool, image: int = 448,
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


def siglip2(name: str, image: int, patch: int, width: int, depth: int, heads: int, mlp_dim: int, act: str,
             text: tuple[int, int, int, int] | None = None) -> ModelConfig:
    """open_clip's *-SigLIP2: SigLIP's towers with the Gemma vocabulary; `text` (width, depth, heads, mlp_dim) where
    the text tower differs from the vision tower (ViT-gopt)."""
    return siglip(name, image, patch, width, depth, heads, mlp_dim, 64, act, text, gemma=True)


def tiny(name: str, **vision) -> ModelConfig:
    image = vision.pop("image_size", 32)
    return ModelConfig(
        name=name,
        embed_dim=48,
        vision=VisionConfig(image_size=image, patch_size=8, width=64, depth=2, heads=4, mlp_dim=256, **vision),
        text=TextConfig(width=32, depth=2, heads=2, mlp_dim=128, act=vision.get("act", "gelu")),
        preprocess=PreprocessConfig(image_size=image),
    )


def tiny_naflex(name: str) -> ModelConfig:
    """A NaFlex vision tower (SigLIP 2's: patch sequences at each image's aspect ratio, MAP pooling) on a 4x4 grid
    of learned positions, with the CLIP text tower."""
    cfg = tiny(name, class_token=False, pool="map", norm_pre=False, patch_bias=True)
    return cfg.replace(vision=dataclasses.replace(cfg.vision, naflex=True),
                       preprocess=PreprocessConfig(image_size=32, mean=INCEPTION_MEAN, std=INCEPTION_STD,
                                                   interpolation="bilinear", resize_mode="naflex", patch_size=8,
                                                   max_patches=16))


# timm's fastvit_mci0..4 (MobileCLIP's image encoders): blocks per stage, widths, MLP ratio. MCi3 and MCi4
# (MobileCLIP 2) add a fifth stage, attention in the last two, LayerNorm in their attention blocks, no
# squeeze-excite in the downsampling and no 1x1 branch in the stem.
FASTVIT_MCI = {
    "mci0": ((2, 6, 10, 2), (64, 128, 256, 512), 3.0),
    "mci1": ((4, 12, 20, 4), (64, 128, 256, 512), 3.0),
    "mci2": ((4, 12, 24, 4), (80, 160, 320, 640), 3.0),
    "mci3": ((2, 12, 24, 4, 2), (96, 192, 384, 768, 1536), 4.0),
    "mci4": ((2, 12, 24, 4, 4), (128, 256, 512, 1024, 2048), 4.0),
}
MOBILECLIP_MEAN, MOBILECLIP_STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # open_clip's _mccfg: pixels in [0, 1]


def fastvit_mci(kind: str, image: int = 256) -> FastViTConfig:
    layers, dims, ratio = FASTVIT_MCI[kind]
    n = len(dims)
    attn = 2 if n == 5 else 1
    return FastViTConfig(
        image_size=image, layers=layers, dims=dims, mlp_ratio=ratio,
        mixers=("repmixer",) * (n - attn) + ("attention",) * attn,
        pos_conv=(False,) * (n - attn) + (True,) * attn,
        se_downsample=(False,) * n if n == 5 else (False, False, True, True),
        attn_norm="layernorm" if n == 5 else "batchnorm", stem_scale=n != 5)


def mobileclip(name: str, vision: str, embed: int, causal: bool, openai_stats: bool = False) -> ModelConfig:
    """open_clip's MobileCLIP and MobileCLIP 2 (Vasu et al. 2024, 2025): a FastViT MCi tower (`vision` one of
    FASTVIT_MCI) at 256 px, or "vit-b" (timm's vit_base_mci_224: ViT-B/16 behind a three-convolution stem, positions
    for the patches only) or "vit-l" (timm's vit_large_patch14_clip_224) at 224 px, each with a biased
    projection; open_clip's CLIP text tower `embed` wide, without the causal mask except in B. Preprocessing as
    open_clip's pretrained configs: the shortest side resized bilinearly (L-14: bicubic), pixels in [0, 1]
    (MobileCLIP, MobileCLIP 2 S0, S2 and B) or OpenAI's statistics (S3, S4, L-14)."""
    if vision == "vit-b":
        tower, image = VisionConfig(patch_size=16, stem="mci", pos_prefix=False, norm_pre=False, norm_eps=1e-6,
                                    head_bias=True), 224
    elif vision == "vit-l":
        tower, image = VisionConfig(patch_size=14, width=1024, depth=24, heads=16, mlp_dim=4096, head_bias=True), 224
    else:
        tower, image = fastvit_mci(vision), 256
    mean, std = (OPENAI_MEAN, OPENAI_STD) if openai_stats else (MOBILECLIP_MEAN, MOBILECLIP_STD)
    return ModelConfig(
        name=name,
        embed_dim=embed,
        vision=tower,
        text=TextConfig(width=embed, heads=embed // 64, depth=12, mlp_dim=4 * embed, causal=causal),
        preprocess=PreprocessConfig(image_size=image, mean=mean, std=std,
                                    interpolation="bicubic" if vision == "vit-l" else "bilinear"),
    )


# timm's ConvNeXt trunks: blocks per stage, widths per stage, LayerNorm epsilon
CONVNEXT_TRUNKS = {
    "convnext_tiny": ((3, 3, 9, 3), (96, 192, 384, 768), 1e-6),
    "convnext_small": ((3, 3, 27, 3), (96, 192, 384, 768), 1e-6),
    "convnext_base": ((3, 3, 27, 3), (128, 256, 512, 1024), 1e-6),
    "convnext_large": ((3, 3, 27, 3), (192, 384, 768, 1536), 1e-6),
    "convnext_xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048), 1e-6),
    "convnext_xxlarge": ((3, 4, 30, 3), (384, 768, 1536, 3072), 1e-5),
}


def convnext(name: str, trunk: str, image: int, embed: int, text_width: int, text_depth: int,
             mlp_head: bool = False) -> ModelConfig:
    """open_clip's convnext_* models (LAION's ConvNeXt CLIP): timm's `trunk` with open_clip's head (a linear
    projection without bias, or for the "_d" models an MLP through 2 x embed), and open_clip's CLIP text tower
    (heads of width 64). Preprocessing as their pretrained configs: OpenAI's statistics, bicubic, shortest side."""
    layers, dims, eps = CONVNEXT_TRUNKS[trunk]
    return ModelConfig(
        name=name,
        embed_dim=embed,
        vision=ConvNeXtConfig(image_size=image, layers=layers, dims=dims, norm_eps=eps,
                              head_hidden=2 * embed if mlp_head else 0),
        text=TextConfig(width=text_width, heads=text_width // 64, depth=text_depth, mlp_dim=4 * text_width),
        preprocess=PreprocessConfig(image_size=image),
    )


def tiny_convnext(name: str) -> ModelConfig:
    """A small ConvNeXt (four stages as timm's, an MLP head) at 64 px with the CLIP text tower, for fast tests."""
    cfg = tiny(name)
    vision = ConvNeXtConfig(image_size=64, layers=(1, 1, 2, 1), dims=(8, 16, 24, 32), head_hidden=2 * cfg.embed_dim)
    return cfg.replace(vision=vision, preprocess=PreprocessConfig(image_size=64))


def tiny_fastvit(name: str) -> ModelConfig:
    """A small FastViT (every block kind: RepMixer stages, an attention stage with its positional encoding and
    LayerNorm, squeeze-excite downsampling) at 64 px with the CLIP text tower, for fast tests."""
    cfg = tiny(name)
    vision = FastViTConfig(image_size=64, layers=(1, 1, 2), dims=(16, 32, 64), mlp_ratio=2.0,
                           mixers=("repmixer", "repmixer", "attention"), pos_conv=(False, False, True),
                           se_downsample=(False, True, True), attn_norm="layernorm")
    return cfg.replace(vision=vision, preprocess=PreprocessConfig(image_size=64, mean=MOBILECLIP_MEAN,
                                                                  std=MOBILECLIP_STD, interpolation="bilinear"))
