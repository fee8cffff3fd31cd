"""Small frozen configs: one per tower, one for preprocessing, one for the whole model.

Every field that changes the numbers has a name and a value; there is no "None means the architecture
default". Both towers share one transformer, so its 17 fields (`BlockConfig`) are defined and checked once and
each tower's config extends them with its embedding and pooling. `ModelConfig.to_dict()` /
`ModelConfig.from_dict()` round-trip through JSON (the block fields nested under "block", format version 2;
version 1 wrote them flat and is still read), and `from_dict` refuses keys it does not know, so a checkpoint
never carries settings that were silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar

from .checks import check as _check
from .checks import finite as _finite
from .checks import ints as _ints
from .errors import UserError
from .tower_configs import CONV_KINDS, ConvNeXtConfig, ConvVisionConfig, FastViTConfig, HFTextConfig  # noqa: F401

ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")
NORMS = ("layernorm", "rmsnorm")
QK_NORMS = ("none", "head", "full")  # per head (timm), or over the full width before the heads split (InternViT-6B)
MLP_TYPES = ("mlp", "swiglu")
VISION_POOLS = ("cls", "mean", "map", "mean_query")
TEXT_POOLS = ("eot", "last", "argmax", "first")

# "clip-bpe": OpenAI's CLIP BPE (bundled). "external": the model's own tokenizer is not bundled (SigLIP's
# SentencePiece vocabulary); texts must come as token ids, or from a tokenizer.json beside the weights.
TOKENIZERS = ("clip-bpe", "external")
# How text is cleaned before a tokenizer.json tokenizer (SigLIP 2's Gemma vocabulary; see tokenizers/hf_json.py):
# open_clip's cleaning functions, transformers' Siglip2Tokenizer rule (a Lowercase normaliser, nothing else), or
# nothing before the file's own normaliser (transformers' other tokenizers: MetaCLIP 2's XLM-V and mT5).
TEXT_CLEANS = ("canonicalize", "lower", "whitespace", "hf-lowercase", "none")

# Image statistics. OpenAI CLIP's are used by every open_clip ViT config that does not override them.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
INCEPTION_MEAN = INCEPTION_STD = (0.5, 0.5, 0.5)  # SigLIP's
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # InternViT's

# OpenAI's CLIP BPE vocabulary: 49,406 merges and bytes, then the two special tokens.
CLIP_VOCAB_SIZE, CLIP_SOT_ID, CLIP_EOT_ID = 49408, 49406, 49407

# CLIP (Radford et al. 2021): temperature 0.07 at init, learned in log space, clamped at 100.
CLIP_INIT_LOGIT_SCALE, CLIP_MAX_LOGIT_SCALE = math.log(1 / 0.07), math.log(100)
# SigLIP (Zhai et al. 2023): t' = log 10 and b = -10 at init, so early logits match the rare positives.
SIGLIP_INIT_LOGIT_SCALE, SIGLIP_INIT_LOGIT_BIAS = math.log(10), -10.0

CONFIG_VERSION = 2  # the layout of ModelConfig.to_dict(); 1: block fields flat in each tower


@dataclass(frozen=True)
class BlockConfig:
    """The transformer of a tower: its size and the parts of every block (see model.layers.build_block)."""

    TOWER: ClassVar[str] = "block"
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    act: str = "gelu"
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    post_norm: bool = False  # norm after the residual add (original Transformer) instead of before
    ls_init: float = 0.0  # layer scale init value; 0 = no layer scale
    qkv_bias: bool = True
    k_bias: bool = True  # False: q and v have biases, k none (EVA)
    proj_bias: bool = True  # attention output projection
    mlp_bias: bool = True
    qk_norm: str = "none"  # one of QK_NORMS
    attn_norm: bool = False  # norm on the attention output before its projection (EVA-02 sub-LN)
    mlp_type: str = "mlp"  # one of MLP_TYPES
    mlp_norm: bool = False  # norm on the MLP's hidden layer (EVA-02 sub-LN)

    def __post_init__(self):
        t = self.TOWER
        _check(self.act in ACTIVATIONS, f"{t} act {self.act!r} is not one of {ACTIVATIONS}")
        _check(self.norm in NORMS, f"{t} norm {self.norm!r} is not one of {NORMS}")
        _check(self.qk_norm in QK_NORMS, f"{t} qk_norm {self.qk_norm!r} is not one of {QK_NORMS}")
        _check(self.mlp_type in MLP_TYPES, f"{t} mlp_type {self.mlp_type!r} is not one of {MLP_TYPES}")
        _ints(t, self, width=(1, 1 << 16), depth=(1, 1024), heads=(1, 1 << 12), mlp_dim=(1, 1 << 20))
        _finite(t, self, norm_eps=(0, 1), ls_init=(0, 1e6))
        _check(self.norm_eps > 0, f"{t} norm_eps {self.norm_eps} must be above 0")
        _check(self.width % self.heads == 0, f"{t} width {self.width} is not divisible by heads {self.heads}")


BLOCK_FIELDS = tuple(f.name for f in dataclasses.fields(BlockConfig))


@dataclass(frozen=True)
class VisionConfig(BlockConfig):
    TOWER: ClassVar[str] = "vision"
    image_size: int = 224
    patch_size: int = 32
    patch_bias: bool = False
    # "patch": one convolution per patch; "mci": MobileCLIP-B's convolutional stem (timm's vit_base_mci_224:
    # 4x4 stride 4 and 2x2 stride 2, each with BatchNorm and GELU, then a biased 2x2 stride 2; patch_size 16)
    stem: str = "patch"
    patch_norm: bool = False  # a norm on the patch embeddings, before the positions are added (AIMv2)
    class_token: bool = True
    registers: int = 0  # learned register tokens after the class token (DINOv2-style; TIPSv2 has 1)
    pos_prefix: bool = True  # the learned positions cover the class and register tokens; False: patches only
    norm_pre: bool = True  # norm on the tokens before the transformer
    rope: bool = False  # 2-D rotary position embedding on the patch tokens (EVA-02), beside the learned one
    rope_ref_grid: int = 0  # the grid rotary positions are scaled to; 0 = this tower's grid
    rope_temperature: float = 10000.0
    rope_offset: float = 0.0  # added to each patch's row and column index before scaling (PE: 1, EVA-02: 0)
    # which axis the first half of the rotary channel pairs follows: "ij" the row (EVA-02), "xy" the column (PE)
    rope_indexing: str = "ij"
    # how the learned positions follow another patch grid: "bicubic" (timm, HF, open_clip) or "bilinear" (PE's
    # own rule); a NaFlex tower always resamples bilinearly with antialiasing
    pos_resize: str = "bicubic"
    # "cls" (class token), "mean" (mean over patch tokens), "map" (a learned query attends; SigLIP) or
    # "mean_query" (the mean token attends over all tokens, InternVL-C's image head; the head is its projection)
    pool: str = "cls"
    pool_heads: int = 0  # heads of a "map"/"mean_query" pool; 0 = the tower's
    pool_mlp_dim: int = 0  # the hidden width of a "map" pool's MLP; 0 = the tower's mlp_dim (PE-G's is narrower)
    pool_norm_eps: float = 1e-5  # eps of the "mean_query" pool's LayerNorms
    final_norm: str = "before_pool"  # "before_pool", "after_pool" or "none"
    head: bool = True  # False: no projection, the pooled features are the embedding (SigLIP)
    head_bias: bool = False
    # SigLIP 2's NaFlex: the tower also takes images as patch sequences at their own aspect ratio
    # (dualtower.naflex.Patches), and resizes its position grid bilinearly with antialiasing (not bicubically)
    naflex: bool = False

    def __post_init__(self):
        super().__post_init__()
        _check(not self.naflex or not (self.class_token or self.rope or self.registers),
               "a NaFlex vision tower has no class token, register tokens or rotary embedding")
        _check(self.stem in ("patch", "mci"), f"vision stem {self.stem!r} is not 'patch' or 'mci'")
        _check(self.stem == "patch" or (self.patch_size == 16 and not self.naflex and self.width % 4 == 0),
               "vision stem 'mci' has patch_size 16, a width divisible by 4 and no NaFlex input")
        _check(self.pool in VISION_POOLS, f"vision pool {self.pool!r} is not one of {VISION_POOLS}")
        _check(self.class_token or self.pool != "cls", "vision pool 'cls' needs class_token=True")
        _check(self.final_norm in ("before_pool", "after_pool", "none"),
               f"vision final_norm {self.final_norm!r} is not 'before_pool', 'after_pool' or 'none'")
        _check(self.width % (self.pool_heads or self.heads) == 0,
               f"vision width {self.width} is not divisible by pool_heads {self.pool_heads}")
        _check(not self.rope or (self.width // self.heads) % 4 == 0,
               f"vision rope needs a head width divisible by 4, got {self.width // self.heads}")
        _check(self.rope_indexing in ("ij", "xy"), f"vision rope_indexing {self.rope_indexing!r} is not 'ij' or 'xy'")
        _check(self.pos_resize in ("bicubic", "bilinear"),
               f"vision pos_resize {self.pos_resize!r} is not 'bicubic' or 'bilinear'")
        _ints("vision", self, image_size=(1, 1 << 14), patch_size=(1, 1 << 12), rope_ref_grid=(0, 1 << 12),
              pool_heads=(0, 1 << 12), pool_mlp_dim=(0, 1 << 20), registers=(0, 256))
        _finite("vision", self, rope_temperature=(1e-6, 1e12), pool_norm_eps=(1e-12, 1), rope_offset=(-1e6, 1e6))
        _check(self.image_size >= self.patch_size,
               f"image_size {self.image_size} is smaller than patch_size {self.patch_size}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size  # pixels past the last whole patch are unused (as timm, HF)

    @property
    def stride(self) -> int:
        """Input pixels per output position (a convolutional tower's is its last stage's)."""
        return self.patch_size


@dataclass(frozen=True)
class TextConfig(BlockConfig):
    TOWER: ClassVar[str] = "text"
    width: int = 512  # CLIP's text transformer is narrower than its vision one
    heads: int = 8
    mlp_dim: int = 2048
    vocab_size: int = CLIP_VOCAB_SIZE
    context_length: int = 77
    causal: bool = True  # False: every token sees the whole sequence (SigLIP)
    # "eot": the first end-of-text token; "last": the last position (SigLIP); "argmax": the largest id's first
    # position (transformers' rule for CLIP text configs whose eos_token_id is the legacy 2); "first": position 0
    # (where transformers' eos_token_id lies outside the vocabulary, it never finds one and pools there)
    pool: str = "eot"
    head: bool = True
    head_bias: bool = False
    eot_id: int = CLIP_EOT_ID  # "eot" pooling reads the hidden state at the first end-of-text token
    pad_id: int = 0

    def __post_init__(self):
        super().__post_init__()
        _ints("text", self, vocab_size=(1, 1 << 24), context_length=(1, 1 << 16), eot_id=(-1 << 31, 1 << 31),
              pad_id=(-1 << 31, 1 << 31))
        _check(self.pool in TEXT_POOLS, f"text pool {self.pool!r} is not one of {TEXT_POOLS}")
        _check(self.pool != "eot" or 0 <= self.eot_id < self.vocab_size,
               f"eot_id {self.eot_id} is outside the vocabulary")


RGB_RULES = ("after_resize", "white_first", "convert_first", "scaled_first")


@dataclass(frozen=True)
class PreprocessConfig:
    image_size: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"
    # "shortest": resize the shortest side, then center crop; "squash": resize to a square (no crop);
    # "naflex": keep the aspect ratio, resize to at most `max_patches` patches of `patch_size` (SigLIP 2 NaFlex)
    resize_mode: str = "shortest"
    patch_size: int = 0  # "naflex" only: the vision tower's patch size
    max_patches: int = 0  # "naflex" only: the default patch budget per image (transformers' max_num_patches)
    # timm's eval transform: resize to floor(image_size / crop_pct), then center crop image_size (1: no margin)
    crop_pct: float = 1.0
    # where a center crop starts: "round" (torchvision, open_clip, timm: round((H - h) / 2)) or "floor" (HF's
    # image processors: (H - h) // 2); they differ by a pixel when H - h is odd
    center_crop: str = "round"
    # how a file that is not plain RGB (alpha, palette, 16-bit, CMYK, ...) becomes RGB, each its reference's way:
    #   "after_resize"  resize and crop in the file's own mode, then Pillow's convert("RGB"): alpha dropped,
    #                   16-bit clipped (open_clip, OpenAI CLIP)
    #   "white_first"   first composite over white through RGBA (transformers' image processors)
    #   "convert_first" first Pillow's convert("RGB") (timm's datasets, InternVL's own loader)
    #   "scaled_first"  first composite over white, and 16-bit / float samples scaled to 8 bits, not clipped
    rgb: str = "after_resize"

    def __post_init__(self):
        _check(self.rgb in RGB_RULES, f"rgb {self.rgb!r} is not one of {RGB_RULES}")
        _check(self.center_crop in ("round", "floor"), f"center_crop {self.center_crop!r} is not 'round' or 'floor'")
        _check(isinstance(self.crop_pct, (int, float)) and 0 < self.crop_pct <= 1,
               f"crop_pct {self.crop_pct!r} is not in (0, 1]")
        _check(self.interpolation in ("bicubic", "bilinear"), f"interpolation {self.interpolation!r} unknown")
        _check(self.resize_mode in ("shortest", "squash", "naflex"), f"resize_mode {self.resize_mode!r} unknown")
        _ints("preprocess", self, image_size=(1, 1 << 14), patch_size=(0, 1 << 12), max_patches=(0, 1 << 20))
        _check((self.resize_mode == "naflex") == (self.patch_size > 0 and self.max_patches > 0),
               "preprocess patch_size and max_patches are set for resize_mode 'naflex', and only for it")
        for key in ("mean", "std"):
            values = getattr(self, key)
            _check(isinstance(values, (list, tuple)) and len(values) == 3 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values),
                f"preprocess {key} {values!r} must be three finite numbers")
            object.__setattr__(self, key, tuple(float(v) for v in values))
        _check(all(v > 0 for v in self.std), f"preprocess std {list(self.std)} must be above 0 (it divides)")


# A model's own tokenizer files (SigLIP's SentencePiece spiece.model, SigLIP 2's Gemma tokenizer.json, and their
# settings): the one list that checkpoints, exports, the ONNX runtime, the Hub loader and get_tokenizer read.
TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "custom"
    embed_dim: int = 512
    # None: a text-only model (CLIPTextModel)
    vision: VisionConfig | ConvVisionConfig | None = field(default_factory=VisionConfig)
    text: TextConfig | None = field(default_factory=TextConfig)  # None: a vision-only model (InternViT)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    tokenizer: str = "clip-bpe"
    text_clean: str = "canonicalize"  # one of TEXT_CLEANS; used by tokenizer.json tokenizers only
    init_logit_scale: float = CLIP_INIT_LOGIT_SCALE
    init_logit_bias: float | None = None  # None: the model has no logit bias (SigLIP-style models set one)
    max_logit_scale: float | None = CLIP_MAX_LOGIT_SCALE  # CLIP clamps the learned log scale; None: no clamp

    def __post_init__(self):
        _check(self.tokenizer in TOKENIZERS, f"tokenizer {self.tokenizer!r} unknown (known: {TOKENIZERS})")
        _check(self.text_clean in TEXT_CLEANS, f"text_clean {self.text_clean!r} unknown (known: {TEXT_CLEANS})")
        _ints("model", self, embed_dim=(1, 1 << 16))
        _finite("model", self, init_logit_scale=(-100, 100))
        for key in ("init_logit_bias", "max_logit_scale"):
            if getattr(self, key) is not None:
                _finite("model", self, **{key: (-1e6, 1e6)})
        for tower, c in (("vision", self.vision), ("text", self.text)):
            _check(c is None or c.head or c.width == self.embed_dim,
                   f"{tower} has no projection head, so its width {c and c.width} must equal embed_dim "
                   f"{self.embed_dim}")
        _check(self.vision is not None or self.text is not None, "a model needs at least one tower")
        _check(self.vision is None or self.vision.naflex == (self.preprocess.resize_mode == "naflex"),
               "a NaFlex vision tower and preprocess resize_mode 'naflex' go together")
        _check(self.vision is None or not self.vision.naflex or self.preprocess.patch_size == self.vision.patch_size,
               f"preprocess patch_size {self.preprocess.patch_size} differs from the vision tower's "
               f"{getattr(self.vision, 'patch_size', None)}")
        _check(self.vision is None or self.preprocess.image_size == self.vision.image_size,
               f"preprocess image_size {self.preprocess.image_size} differs from the vision tower's "
               f"{self.vision and self.vision.image_size}")

    def to_dict(self) -> dict:
        """JSON-ready, in the layout of CONFIG_VERSION: each tower's block fields under "block"."""
        data = dataclasses.asdict(self)
        for tower in ("vision", "text"):
            if data[tower] is not None and isinstance(getattr(self, tower), BlockConfig):
                flat = data[tower]
                data[tower] = {"block": {k: flat.pop(k) for k in BLOCK_FIELDS}, **flat}
        return data

    @classmethod
    def from_dict(cls, data: dict, version: int = CONFIG_VERSION) -> "ModelConfig":
        """From `to_dict()`'s layout of `version` (1: block fields flat in each tower, 2: nested)."""
        if version not in (1, CONFIG_VERSION):
            raise UserError(f"config version {version!r} is not supported (1 or {CONFIG_VERSION})")
        _check(isinstance(data, dict), f"config must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        parts = {"vision": VisionConfig, "text": TextConfig, "preprocess": PreprocessConfig}
        for key, part in parts.items():
            value = data.get(key)
            if value is None:
                continue
            if key == "text" and isinstance(value, dict) and "model_type" in value:
                data[key] = _build(HFTextConfig, value, f"config.{key}")
                continue
            if key == "vision" and isinstance(value, dict) and "kind" in value:
                kind = CONV_KINDS.get(value["kind"])
                _check(kind is not None, f"config.vision kind {value['kind']!r} is not one of {sorted(CONV_KINDS)}")
                data[key] = _build(kind, value, f"config.{key}")
                continue
            if version >= 2 and key != "preprocess":
                value = _unnest_block(value, f"config.{key}")
            data[key] = _build(part, value, f"config.{key}")
        return _build(cls, data, "config")

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _unnest_block(tower: dict, where: str) -> dict:
    _check(isinstance(tower, dict), f"{where} must be a JSON object, got {type(tower).__name__}")
    tower = dict(tower)
    block = tower.pop("block", None)
    _check(isinstance(block, dict), f"{where}.block must be a JSON object")
    unknown = sorted(set(block) - set(BLOCK_FIELDS))
    _check(not unknown, f"{where}.block has unknown keys {unknown}; known keys: {sorted(BLOCK_FIELDS)}")
    clash = sorted(set(block) & set(tower))
    _check(not clash, f"{where} has block fields outside its block: {clash}")
    return {**block, **tower}


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a JSON object, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"{where} has unknown keys {unknown}; known keys: {sorted(known)}")
    data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**data)
