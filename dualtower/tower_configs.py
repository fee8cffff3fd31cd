"""The configs of the towers that are not the shared transformer (config.BlockConfig): convolutional vision towers
(FastViT for MobileCLIP, ConvNeXt for LAION's convnext CLIP models) and a transformers encoder as the text tower
(multilingual CLIP). `config` imports them; `ModelConfig` holds them where it holds a VisionConfig or a TextConfig.
A new convolutional kind is one ConvVisionConfig subclass here, listed in CONV_KINDS, and its tower module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .checks import check as _check
from .checks import finite as _finite
from .checks import ints as _ints
from .errors import UserError


FASTVIT_MIXERS = ("repmixer", "attention")


class ConvVisionConfig:
    """What every convolutional vision tower's config shares: `dims` and `layers` per stage (the stages are named
    `stages.S.blocks.J` in the weights), pixels of one size in, average-pooled features out; no patches, no
    positions, no class token. `family` names the kind in messages; `foldable`: `reparameterize()` folds its
    training-time branches (then `folded`)."""

    TOWER: ClassVar[str] = "vision"
    naflex: ClassVar[bool] = False
    family: ClassVar[str] = ""
    foldable: ClassVar[bool] = False
    dims: tuple[int, ...]
    layers: tuple[int, ...]
    folded = False  # a foldable kind's config has it as a field

    def _check_stages(self, lists: tuple[str, ...]) -> None:
        for key in lists:
            value = getattr(self, key)
            _check(isinstance(value, (list, tuple)), f"vision {key} must be a list, got {value!r}")
            object.__setattr__(self, key, tuple(value))
        n = len(self.dims)
        _check(1 <= n <= 8 and all(len(getattr(self, k)) == n for k in lists),
               f"vision {', '.join(lists)} need one entry per stage (1 to 8), got "
               f"{[len(getattr(self, k)) for k in lists]}")
        _check(all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 256 for v in self.layers),
               f"vision layers {list(self.layers)} must be integers in [1, 256]")
        _check(all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1 << 14 for v in self.dims),
               f"vision dims {list(self.dims)} must be integers in [1, 16384]")

    @property
    def depth(self) -> int:
        return sum(self.layers)

    @property
    def stride(self) -> int:
        """Input pixels per feature-map position at the last stage."""
        return 4 * 2 ** (len(self.dims) - 1)


@dataclass(frozen=True)
class FastViTConfig(ConvVisionConfig):
    """A FastViT "MCi" convolutional vision tower (MobileCLIP, MobileCLIP 2 S0-S4; see model.fastvit): a
    MobileOne stem to dims[0] channels at 1/4 size, then one stage per entry of `dims` (each after the first
    halving the size), `layers` blocks each mixed by RepMixer or attention, a conditional positional encoding
    where `pos_conv` says, a final MobileOne to `head_ratio` x the last width, average pooling and the
    projection. `folded`: the training-time branches are folded into single convolutions (inference only)."""

    family: ClassVar[str] = "FastViT"
    foldable: ClassVar[bool] = True
    kind: str = "fastvit"  # tells this config from a ViT's in config.json
    image_size: int = 256
    layers: tuple[int, ...] = (2, 6, 10, 2)
    dims: tuple[int, ...] = (64, 128, 256, 512)
    mixers: tuple[str, ...] = ("repmixer", "repmixer", "repmixer", "attention")
    pos_conv: tuple[bool, ...] = (False, False, False, True)  # a conditional positional encoding before the blocks
    se_downsample: tuple[bool, ...] = (False, False, True, True)  # squeeze-excite in the stage's downsampling
    mlp_ratio: float = 3.0
    attn_norm: str = "batchnorm"  # the attention blocks' norm: "batchnorm" (MCi0-2) or "layernorm" (MCi3-4)
    stem_scale: bool = True  # the stem's 3x3 MobileOnes have a 1x1 branch (not in MCi3-4)
    down_act: bool = True  # GELU after the downsampling large kernel (MCi's lkc_use_act)
    head_ratio: float = 2.0  # the final convolution's width over the last stage's
    head: bool = True
    head_bias: bool = True
    folded: bool = False

    def __post_init__(self):
        _check(self.kind == "fastvit", f"vision kind {self.kind!r} is not 'fastvit'")
        self._check_stages(("layers", "dims", "mixers", "pos_conv", "se_downsample"))
        n = len(self.dims)
        _check(all(m in FASTVIT_MIXERS for m in self.mixers), f"vision mixers {list(self.mixers)} must each be one "
               f"of {FASTVIT_MIXERS}")
        _check(all(self.dims[i] % self.dims[i - 1] == 0 for i in range(1, n)),
               f"vision dims {list(self.dims)}: each stage's width is a multiple of the one before (its "
               "downsampling is depthwise)")
        _check(all(d % 32 == 0 for d, m in zip(self.dims, self.mixers) if m == "attention"),
               f"vision dims {list(self.dims)}: an attention stage's width is a multiple of its head width 32")
        _check(self.attn_norm in ("batchnorm", "layernorm"),
               f"vision attn_norm {self.attn_norm!r} is not 'batchnorm' or 'layernorm'")
        _ints("vision", self, image_size=(32, 1 << 14))
        _finite("vision", self, mlp_ratio=(0.01, 64), head_ratio=(0.01, 64))
        _check(self.head or not self.head_bias, "vision head_bias needs head=True")

    @property
    def width(self) -> int:
        """The pooled features' width (the final convolution's)."""
        return int(self.dims[-1] * self.head_ratio)


@dataclass(frozen=True)
class ConvNeXtConfig(ConvVisionConfig):
    """A ConvNeXt vision tower (Liu et al. 2022, arXiv:2201.03545) as open_clip's convnext_* CLIP models build it
    (a timm trunk): a 4x4 stride-4 patchify convolution and LayerNorm, then per stage (after the first: LayerNorm
    and a 2x2 stride-2 convolution) `layers` blocks of depthwise 7x7 convolution, LayerNorm, a 4x MLP and a
    layer scale; average pooling, LayerNorm, and the projection: linear, or an MLP through `head_hidden`
    (open_clip's timm_proj "mlp": 2 x embed_dim, GELU)."""

    family: ClassVar[str] = "ConvNeXt"
    kind: str = "convnext"
    image_size: int = 224
    layers: tuple[int, ...] = (3, 3, 9, 3)
    dims: tuple[int, ...] = (96, 192, 384, 768)
    norm_eps: float = 1e-6
    head: bool = True
    head_hidden: int = 0  # 0: a linear projection
    head_bias: bool = False

    def __post_init__(self):
        _check(self.kind == "convnext", f"vision kind {self.kind!r} is not 'convnext'")
        self._check_stages(("layers", "dims"))
        _check(not self.folded, "vision folded: a ConvNeXt has no training-time branches to fold")
        _ints("vision", self, image_size=(32, 1 << 14), head_hidden=(0, 1 << 16))
        _finite("vision", self, norm_eps=(1e-12, 1e-2))
        _check(self.head or not (self.head_bias or self.head_hidden), "vision head_bias and head_hidden need head=True")

    @property
    def width(self) -> int:
        return self.dims[-1]


# every convolutional kind, by the `kind` its config.json carries
CONV_KINDS: dict[str, type[ConvVisionConfig]] = {"fastvit": FastViTConfig, "convnext": ConvNeXtConfig}


# A Hugging Face encoder as the text tower (open_clip's HFTextEncoder): its kinds (transformers model_type), how
# its tokens are pooled (open_clip's mean_pooler, max_pooler, cls_pooler) and projected (hf_proj_type)
HF_ENCODERS = ("xlm-roberta", "roberta", "bert", "m2m_100", "mt5")
HF_TEXT_POOLS = ("mean", "max", "cls")
HF_TEXT_PROJS = ("linear", "mlp", "none")


@dataclass(frozen=True)
class HFTextConfig:
    """A transformers encoder as the text tower: XLM-R / BERT (XLMRobertaModel without its pooler), NLLB's
    M2M100 encoder, mT5's encoder stack, built from `encoder` (the transformers config's fields as JSON: frozen
    and hashable), attending only to tokens other than `pad_id`, pooled by `pool` (over real tokens only; "cls":
    position 0, NLLB's language tag) and projected by `proj` ("mlp": Linear-GELU-Linear through the mean of the
    two widths, no biases; "none": the encoder's width is the embedding). Bidirectional, so never causal."""

    TOWER: ClassVar[str] = "text"
    model_type: str = "xlm-roberta"
    encoder: str = "{}"
    pool: str = "mean"
    proj: str = "mlp"
    context_length: int = 77  # what the tokenizer pads to (open_clip's text_cfg context_length)
    causal: ClassVar[bool] = False

    def __post_init__(self):
        import json

        _check(self.model_type in HF_ENCODERS, f"text model_type {self.model_type!r} is not one of {HF_ENCODERS}")
        _check(self.pool in HF_TEXT_POOLS, f"text pool {self.pool!r} is not one of {HF_TEXT_POOLS}")
        _check(self.proj in HF_TEXT_PROJS, f"text proj {self.proj!r} is not one of {HF_TEXT_PROJS}")
        _ints("text", self, context_length=(1, 1 << 16))
        try:
            fields = json.loads(self.encoder)
        except (TypeError, ValueError) as e:
            raise UserError(f"text encoder is not a JSON object of transformers config fields ({e})") from None
        _check(isinstance(fields, dict), "text encoder must be a JSON object of transformers config fields")
        object.__setattr__(self, "encoder", json.dumps(fields, sort_keys=True))  # one spelling per config
        for key in ("vocab_size", "pad_token_id"):
            _check(isinstance(fields.get(key), int), f"text encoder needs an integer {key}")
        _check(isinstance(self.width, int) and self.width > 0, "text encoder needs its width (hidden_size/d_model)")

    @property
    def fields(self) -> dict:
        import json

        return json.loads(self.encoder)

    @property
    def width(self) -> int:
        f = self.fields
        return f.get("d_model") if self.model_type in ("m2m_100", "mt5") else f.get("hidden_size")

    @property
    def depth(self) -> int:
        f = self.fields
        return {"m2m_100": f.get("encoder_layers"), "mt5": f.get("num_layers")}.get(self.model_type,
                                                                                   f.get("num_hidden_layers"))

    @property
    def vocab_size(self) -> int:
        return self.fields["vocab_size"]

    @property
    def pad_id(self) -> int:
        return self.fields["pad_token_id"]

    @property
    def head(self) -> bool:
        return self.proj != "none"
