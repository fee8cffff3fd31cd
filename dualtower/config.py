"""Small frozen configs: one per tower, one for preprocessing, one for the whole model.

Every field that changes the numbers has a name and a value; there is no "None means the architecture
default". `ModelConfig.to_dict()` / `ModelConfig.from_dict()` round-trip through JSON, and `from_dict`
refuses keys it does not know, so a checkpoint never carries settings that were silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")
NORMS = ("layernorm", "rmsnorm")
QK_NORMS = ("none", "head", "full")  # per head (timm), or over the full width before the heads split (InternViT-6B)
MLP_TYPES = ("mlp", "swiglu")
VISION_POOLS = ("cls", "mean", "map", "mean_query")

# OpenAI CLIP's image statistics, used by every open_clip ViT config that does not override them.
# "clip-bpe": OpenAI's CLIP BPE (bundled). "external": the model's own tokenizer is not bundled (SigLIP's
# SentencePiece vocabulary); texts must come as token ids, or from a tokenizer.json beside the weights.
TOKENIZERS = ("clip-bpe", "external")

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
INCEPTION_MEAN = INCEPTION_STD = (0.5, 0.5, 0.5)  # SigLIP's
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # InternViT's


@dataclass(frozen=True)
class VisionConfig:
    image_size: int = 224
    patch_size: int = 32
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
    patch_bias: bool = False
    class_token: bool = True
    norm_pre: bool = True  # norm on the tokens before the transformer
    rope: bool = False  # 2-D rotary position embedding on the patch tokens (EVA-02), beside the learned one
    rope_ref_grid: int = 0  # the grid rotary positions are scaled to; 0 = this tower's grid
    rope_temperature: float = 10000.0
    # "cls" (class token), "mean" (mean over patch tokens), "map" (a learned query attends; SigLIP) or
    # "mean_query" (the mean token attends over all tokens, InternVL-C's image head; the head is its projection)
    pool: str = "cls"
    pool_heads: int = 0  # heads of a "map"/"mean_query" pool; 0 = the tower's
    pool_norm_eps: float = 1e-5  # eps of the "mean_query" pool's LayerNorms
    final_norm: str = "before_pool"  # "before_pool", "after_pool" or "none"
    head: bool = True  # False: no projection, the pooled features are the embedding (SigLIP)
    head_bias: bool = False

    def __post_init__(self):
        _check(self.act in ACTIVATIONS, f"vision act {self.act!r} is not one of {ACTIVATIONS}")
        _check(self.norm in NORMS, f"vision norm {self.norm!r} is not one of {NORMS}")
        _check(self.qk_norm in QK_NORMS, f"vision qk_norm {self.qk_norm!r} is not one of {QK_NORMS}")
        _check(self.mlp_type in MLP_TYPES, f"vision mlp_type {self.mlp_type!r} is not one of {MLP_TYPES}")
        _check(self.pool in VISION_POOLS, f"vision pool {self.pool!r} is not one of {VISION_POOLS}")
        _check(self.class_token or self.pool != "cls", "vision pool 'cls' needs class_token=True")
        _check(self.final_norm in ("before_pool", "after_pool", "none"),
               f"vision final_norm {self.final_norm!r} is not 'before_pool', 'after_pool' or 'none'")
        _check(self.width % self.heads == 0, f"vision width {self.width} is not divisible by heads {self.heads}")
        _check(self.width % (self.pool_heads or self.heads) == 0,
               f"vision width {self.width} is not divisible by pool_heads {self.pool_heads}")
        _check(not self.rope or (self.width // self.heads) % 4 == 0,
               f"vision rope needs a head width divisible by 4, got {self.width // self.heads}")
        _check(self.image_size >= self.patch_size,
               f"image_size {self.image_size} is smaller than patch_size {self.patch_size}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size  # pixels past the last whole patch are unused (as timm, HF)


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    depth: int = 12
    heads: int = 8
    mlp_dim: int = 2048
    act: str = "gelu"
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    post_norm: bool = False
    ls_init: float = 0.0
    qkv_bias: bool = True
    k_bias: bool = True
    proj_bias: bool = True
    mlp_bias: bool = True
    qk_norm: str = "none"
    attn_norm: bool = False
    mlp_type: str = "mlp"
    mlp_norm: bool = False
    causal: bool = True  # False: every token sees the whole sequence (SigLIP)
    pool: str = "eot"  # "eot": the first end-of-text token; "last": the last position (SigLIP)
    head: bool = True
    head_bias: bool = False
    eot_id: int = 49407  # "eot" pooling reads the hidden state at the first end-of-text token
    pad_id: int = 0

    def __post_init__(self):
        _check(self.act in ACTIVATIONS, f"text act {self.act!r} is not one of {ACTIVATIONS}")
        _check(self.norm in NORMS, f"text norm {self.norm!r} is not one of {NORMS}")
        _check(self.qk_norm in QK_NORMS, f"text qk_norm {self.qk_norm!r} is not one of {QK_NORMS}")
        _check(self.mlp_type in MLP_TYPES, f"text mlp_type {self.mlp_type!r} is not one of {MLP_TYPES}")
        _check(self.pool in ("eot", "last"), f"text pool {self.pool!r} is not 'eot' or 'last'")
        _check(self.width % self.heads == 0, f"text width {self.width} is not divisible by heads {self.heads}")
        _check(0 <= self.eot_id < self.vocab_size, f"eot_id {self.eot_id} is outside the vocabulary")


@dataclass(frozen=True)
class PreprocessConfig:
    image_size: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"
    # "shortest": resize the shortest side, then center crop; "squash": resize to a square (no crop)
    resize_mode: str = "shortest"

    def __post_init__(self):
        _check(self.interpolation in ("bicubic", "bilinear"), f"interpolation {self.interpolation!r} unknown")
        _check(self.resize_mode in ("shortest", "squash"), f"resize_mode {self.resize_mode!r} unknown")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))


@dataclass(frozen=True)
class ModelConfig:
    name: str = "custom"
    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig | None = field(default_factory=TextConfig)  # None: a vision-only model (InternViT)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    tokenizer: str = "clip-bpe"
    # CLIP (Radford et al. 2021): temperature 0.07 at init, learned in log space.
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None  # None: the model has no logit bias (SigLIP-style models set one)
    max_logit_scale: float | None = math.log(100)  # CLIP clamps the learned log scale; None: no clamp (SigLIP)

    def __post_init__(self):
        _check(self.tokenizer in TOKENIZERS, f"tokenizer {self.tokenizer!r} unknown (known: {TOKENIZERS})")
        for tower, c in (("vision", self.vision), ("text", self.text)):
            _check(c is None or c.head or c.width == self.embed_dim,
                   f"{tower} has no projection head, so its width {c and c.width} must equal embed_dim "
                   f"{self.embed_dim}")
        _check(self.preprocess.image_size == self.vision.image_size,
               f"preprocess image_size {self.preprocess.image_size} differs from the vision tower's "
               f"{self.vision.image_size}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        data = dict(data)
        parts = {"vision": VisionConfig, "text": TextConfig, "preprocess": PreprocessConfig}
        for key, part in parts.items():
            if data.get(key) is not None:
                data[key] = _build(part, data[key], f"config.{key}")
        return _build(cls, data, "config")

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; known keys: {sorted(known)}")
    data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**data)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
