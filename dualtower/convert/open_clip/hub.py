"""open_clip's hub layout: a directory with `open_clip_config.json` ({"model_cfg": ..., "preprocess_cfg": ...})
and `open_clip_model.safetensors` or `open_clip_pytorch_model.bin` (open_clip's state dict, see `open_clip`).

`model_cfg` defines the architecture, also when its name is in no registry: open_clip's own ViT configs are
decoded field by field (a field that changes the numbers and that we do not build is refused, never ignored);
a timm-trunk config (`vision_cfg.timm_model_name`) is matched to the one registry entry with that trunk and the
same text tower. `preprocess_cfg` sets mean, std, interpolation and resize mode.
"""

from __future__ import annotations

from ...archs import ARCHS, REGISTRY, TIMM_NAMES
from ...config import CLIP_EOT_ID, CLIP_VOCAB_SIZE, ModelConfig, PreprocessConfig, TextConfig, VisionConfig
from ..files import write_model_directory
from ..remap import ConversionError
from . import tables

CONFIG = "open_clip_config.json"
WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

# Fields that only matter in training or for outputs we do not produce; any value is fine.
_IGNORED = {"patch_dropout", "output_tokens", "timm_model_pretrained", "timm_drop", "timm_drop_path",
            "hf_tokenizer_name", "tokenizer_kwargs", "pad_id"}
# Fields we do not build, with the value they must have.
_VISION_DEFAULTS = {"attentional_pool": False, "no_ln_pre": False, "pos_embed_type": "learnable", "act_kwargs": None,
                    "norm_kwargs": None, "block_type": None, "qk_norm": False, "scaled_cosine_attn": False,
                    "scale_heads": False, "scale_attn_inner": False, "scale_attn": False, "scale_fc": False,
                    "timm_model_name": None}
_TEXT_DEFAULTS = {"embed_cls": False, "no_causal_mask": False, "proj_bias": False,
                  "proj_type": "linear", "act_kwargs": None, "norm_kwargs": None, "block_type": None,
                  "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
                  "scale_attn": False, "scale_fc": False, "hf_model_name": None, "tokenizer_mode": None,
                  "final_ln_after_pool": False}


def _refuse_unbuilt(cfg: dict, defaults: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(cfg) - known - set(defaults) - _IGNORED)
    other = sorted(f"{k}={cfg[k]!r}" for k in defaults if k in cfg and cfg[k] != defaults[k])
    if unknown or other:
        raise ConversionError(f"{where}: fields dualtower does not build: {', '.join(unknown + other)}")


def decode_model_cfg(model_cfg: dict, name: str) -> ModelConfig:
    """Our config from open_clip's `model_cfg` dict."""
    v, t = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    if t.get("hf_model_name"):
        return _hf_text_config(model_cfg, name)
    if v.get("timm_model_name"):
        return _timm_trunk_config(model_cfg, name)
    _refuse_unbuilt(v, _VISION_DEFAULTS, {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size",
                                          "ls_init_value", "final_ln_after_pool", "pool_type"}, f"{name} vision_cfg")
    _refuse_unbuilt(t, _TEXT_DEFAULTS, {"context_length", "width", "heads", "layers", "mlp_ratio", "ls_init_value",
                                        "vocab_size", "pool_type", "eos_id"}, f"{name} text_cfg")
    unknown = sorted(set(model_cfg) - {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "custom_text",
                                       "init_logit_scale", "init_logit_bias"})
    if unknown:
        raise ConversionError(f"{name} model_cfg: fields dualtower does not build: {', '.join(unknown)}")
    if v.get("pool_type", "tok") not in ("tok", "avg"):
        raise ConversionError(f"{name} vision_cfg: pool_type {v['pool_type']!r} is not built (tok or avg)")
    if t.get("pool_type", "argmax") not in ("argmax", "eos"):
        raise ConversionError(f"{name} text_cfg: pool_type {t['pool_type']!r} is not built (argmax or eos)")
    # MetaCLIP 2 worldwide: an HF tokenizer (XLM-V, mT5) pooled at the first end token, cleaned by tokenizer_kwargs
    tokenizer = {}
    if t.get("hf_tokenizer_name"):
        clean = (t.get("tokenizer_kwargs") or {}).get("clean", "whitespace")
        if clean not in ("canonicalize", "lower", "whitespace"):
            raise ConversionError(f"{name}: text_cfg tokenizer_kwargs clean {clean!r} is not built")
        tokenizer = dict(tokenizer="external", text_clean=clean)
    act = "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu"
    width, twidth = int(v.get("width", 768)), int(t.get("width", 512))
    eos, vocab = t.get("pool_type", "argmax") == "eos", int(t.get("vocab_size", CLIP_VOCAB_SIZE))
    try:
        vision = VisionConfig(
            image_size=int(v.get("image_size", 224)), patch_size=int(v.get("patch_size", 16)), width=width,
            depth=int(v.get("layers", 12)), heads=width // int(v.get("head_width", 64)),
            mlp_dim=int(width * float(v.get("mlp_ratio", 4.0))), act=act, ls_init=float(v.get("ls_init_value") or 0),
            pool="mean" if v.get("pool_type", "tok") == "avg" else "cls",
            final_norm="after_pool" if v.get("final_ln_after_pool") else "before_pool")
        text = TextConfig(
            context_length=int(t.get("context_length", 77)), width=twidth, heads=int(t.get("heads", 8)),
            depth=int(t.get("layers", 12)), mlp_dim=int(twidth * float(t.get("mlp_ratio", 4.0))), act=act,
            ls_init=float(t.get("ls_init_value") or 0), vocab_size=vocab,
            pool="eot" if eos or vocab == CLIP_VOCAB_SIZE else "argmax",  # argmax: with the CLIP BPE, the EOT
            eot_id=int(t.get("eos_id", 2)) if eos else CLIP_EOT_ID, pad_id=int(t.get("pad_id", 0)))
        extra = {k: float(model_cfg[k]) for k in ("init_logit_scale", "init_logit_bias") if k in model_cfg}
        return ModelConfig(name=name, embed_dim=int(model_cfg.get("embed_dim", 512)), vision=vision, text=text,
                           preprocess=PreprocessConfig(image_size=vision.image_size), **extra, **tokenizer)
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{name}: model_cfg does not describe a model dualtower can build ({e})") from e


def _hf_text_config(model_cfg: dict, name: str) -> ModelConfig:
    """A config with a transformers text encoder (text_cfg.hf_model_name): the encoder's own config is on the
    Hub, not in the file, so the architecture is the one registry entry with that encoder, the same embedding
    width and the same vision tower; pooling and projection as the file says."""
    t = model_cfg["text_cfg"]
    vision = model_cfg.get("vision_cfg", {})
    matches = [a for a, arch in ARCHS.items() if arch.hf_text == t["hf_model_name"]
               and arch.config.embed_dim == model_cfg.get("embed_dim")]
    if vision.get("timm_model_name"):
        matches = [a for a in matches if ARCHS[a].timm == vision["timm_model_name"]]
    else:
        plain = {k: vision[k] for k in ("layers", "width", "patch_size", "image_size") if k in vision}
        matches = [a for a in matches if all(getattr(REGISTRY[a].vision, f) == plain[k] for k, f in (
            ("layers", "depth"), ("width", "width"), ("patch_size", "patch_size"), ("image_size", "image_size"))
            if k in plain)]
    if len(matches) != 1:
        raise ConversionError(f"{name}: no single architecture has the text encoder {t['hf_model_name']!r} with "
                              f"this vision tower (candidates: {matches or 'none'})")
    cfg = REGISTRY[matches[0]]
    pools = {"mean_pooler": "mean", "max_pooler": "max", "cls_pooler": "cls",
             "cls_last_hidden_state_pooler": "cls"}
    pool, proj = t.get("hf_pooler_type", "mean_pooler"), t.get("hf_proj_type", "mlp")
    if pool not in pools or proj not in ("linear", "mlp", None):
        raise ConversionError(f"{name}: text_cfg hf_pooler_type {pool!r} / hf_proj_type {proj!r} are not built")
    clean = (t.get("tokenizer_kwargs") or {}).get("clean", "whitespace")
    from dataclasses import replace

    return cfg.replace(text=replace(cfg.text, pool=pools[pool], proj=proj or "none",
                                    context_length=int(t.get("context_length", 77))), text_clean=clean)


def _timm_trunk_config(model_cfg: dict, name: str) -> ModelConfig:
    v, t = model_cfg["vision_cfg"], model_cfg.get("text_cfg", {})
    trunk = v["timm_model_name"]
    matches = [a for a, tn in TIMM_NAMES.items() if tn == trunk and REGISTRY[a].text is not None
               and REGISTRY[a].embed_dim == model_cfg.get("embed_dim")
               and REGISTRY[a].vision.image_size == v.get("image_size", REGISTRY[a].vision.image_size)
               and REGISTRY[a].text.context_length == t.get("context_length", 77)
               and REGISTRY[a].text.width == t.get("width", 512) and REGISTRY[a].text.depth == t.get("layers", 12)
               and REGISTRY[a].text.vocab_size == t.get("vocab_size", CLIP_VOCAB_SIZE)]
    matches = [a for a in matches if REGISTRY[a].text.causal == (not t.get("no_causal_mask", False))]
    if len({REGISTRY[a].replace(name="") for a in matches}) > 1 or not matches:  # one architecture, maybe two names
        raise ConversionError(f"{name}: no single architecture has the timm trunk {trunk!r} with this text tower "
                              f"(candidates: {matches or 'none'})")
    # open_clip's HFTokenizer cleans text by tokenizer_kwargs.clean, "whitespace" when unset (SigLIP 2's configs
    # say "canonicalize"); it applies to a tokenizer.json tokenizer that comes with the repo.
    clean = (t.get("tokenizer_kwargs") or {}).get("clean", "whitespace")
    if clean not in ("canonicalize", "lower", "whitespace"):
        raise ConversionError(f"{name}: text_cfg tokenizer_kwargs clean {clean!r} is not built "
                              "(canonicalize, lower or whitespace)")
    return REGISTRY[matches[0]].replace(text_clean=clean)


def encode_model_cfg(cfg: ModelConfig) -> dict:
    """open_clip's `model_cfg` for a model its own ViT and text towers build (the inverse of decode_model_cfg)."""
    v, t = cfg.vision, cfg.text
    if not isinstance(t, TextConfig) and t is not None:
        raise ConversionError(f"{cfg.name}: a transformers text encoder's config lives on the Hub, not in "
                              "open_clip_config.json; write the state dict (a .safetensors name) for "
                              "open_clip.create_model of its architecture")
    problems = []
    if tables.timm_trunk(cfg):
        problems.append("its vision tower is a timm trunk: name it by an open_clip architecture instead")
    if t is None or v.act != t.act or v.act not in ("gelu", "quick_gelu"):
        problems.append("open_clip's CLIP has both towers with one activation, GELU or QuickGELU")
    for tower, c in (("vision", v), ("text", t)):
        if c is not None and int(c.width * (c.mlp_dim / c.width)) != c.mlp_dim:
            problems.append(f"{tower}: its MLP width is not width x a ratio open_clip reproduces")
    if t is not None and (t.vocab_size != CLIP_VOCAB_SIZE or t.pool not in ("eot", "argmax")):
        problems.append("text: open_clip's CLIP text tower has the CLIP vocabulary and pools at the end token")
    if cfg.preprocess.crop_pct != 1 or v.pool not in ("cls", "mean"):
        problems.append("open_clip resizes without a crop margin and pools the class token or the mean")
    if problems:
        raise ConversionError(f"{cfg.name} cannot be written as an open_clip model config: " + "; ".join(problems))
    vision_cfg = {"image_size": v.image_size, "layers": v.depth, "width": v.width, "head_width": v.width // v.heads,
                  "mlp_ratio": v.mlp_dim / v.width, "patch_size": v.patch_size, "ls_init_value": v.ls_init or None,
                  "pool_type": "avg" if v.pool == "mean" else "tok",
                  "final_ln_after_pool": v.final_norm == "after_pool"}
    text_cfg = {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width, "heads": t.heads,
                "layers": t.depth, "mlp_ratio": t.mlp_dim / t.width, "ls_init_value": t.ls_init or None}
    model_cfg = {"embed_dim": cfg.embed_dim, "quick_gelu": v.act == "quick_gelu", "vision_cfg": vision_cfg,
                 "text_cfg": text_cfg, "init_logit_scale": cfg.init_logit_scale}
    if cfg.init_logit_bias is not None:
        model_cfg["init_logit_bias"] = cfg.init_logit_bias
    return model_cfg


def preprocess_cfg(cfg: ModelConfig) -> dict:
    p = cfg.preprocess
    return {"size": p.image_size, "mean": list(p.mean), "std": list(p.std), "interpolation": p.interpolation,
            "resize_mode": p.resize_mode}


def write_directory(model, dst) -> None:
    """open_clip's hub layout: open_clip_config.json + open_clip_model.safetensors, which
    `tables.create_model_and_transforms("local-dir:DST")` loads with its preprocessing."""
    import json

    from ...checkpoint import state_of

    data = {"model_cfg": encode_model_cfg(model.cfg), "preprocess_cfg": preprocess_cfg(model.cfg)}
    write_model_directory(dst, {CONFIG: json.dumps(data, indent=2) + "\n"}, WEIGHTS[0],
                          tables.export_state_dict(state_of(model), model.cfg))


def apply_preprocess_cfg(cfg: ModelConfig, pre: dict, name: str) -> ModelConfig:
    from dataclasses import replace

    p = cfg.preprocess
    mode = {"shortest": "shortest", "squash": "squash"}.get(pre.get("resize_mode", p.resize_mode))
    if mode is None:
        raise ConversionError(f"{name}: preprocess_cfg resize_mode {pre.get('resize_mode')!r} is not built "
                              "(shortest or squash)")
    size = pre.get("size", p.image_size)
    if (size[0] if isinstance(size, (list, tuple)) else size) != cfg.vision.image_size:
        raise ConversionError(f"{name}: preprocess_cfg size {size} differs from the model's "
                              f"{cfg.vision.image_size}")
    try:
        return cfg.replace(preprocess=replace(p, mean=tuple(pre.get("mean", p.mean)), std=tuple(pre.get("std", p.std)),
                                              interpolation=pre.get("interpolation", p.interpolation),
                                              resize_mode=mode))
    except ValueError as e:
        raise ConversionError(f"{name}: preprocess_cfg: {e}") from e
