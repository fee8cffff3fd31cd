"""The dual encoder: two towers mapping images and texts into one space, compared by scaled cosine similarity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConvVisionConfig, HFTextConfig, ModelConfig
from ..errors import UserError
from ..naflex import Patches
from ..origin import Origin
from .layers import Attention
from .noise import KeyedDropout, KeyedDropPath
from .towers import AttentionPool, TextTower, VisionTower


@dataclass
class DualEncoderOutput:
    image_embeds: torch.Tensor  # (B_img, E), L2-normalised
    text_embeds: torch.Tensor  # (B_txt, E), L2-normalised
    logit_scale: torch.Tensor  # scalar, exp of the clamped learned log scale
    logit_bias: torch.Tensor | None

    @property
    def logits_per_image(self) -> torch.Tensor:
        logits = self.logit_scale * self.image_embeds @ self.text_embeds.T  # (B_img, B_txt)
        return logits if self.logit_bias is None else logits + self.logit_bias

    @property
    def logits_per_text(self) -> torch.Tensor:
        return self.logits_per_image.T


class DualEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.visual = None if cfg.vision is None else _vision_tower(cfg.vision)(cfg.vision, cfg.embed_dim)
        self.text = None if cfg.text is None else _text_tower(cfg.text)(cfg.text, cfg.embed_dim)
        # A one-tower model compares nothing, so it has no temperature either.
        contrastive = cfg.vision is not None and cfg.text is not None
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale))) if contrastive else None
        self.logit_bias = None if cfg.init_logit_bias is None or not contrastive else \
            nn.Parameter(torch.tensor(float(cfg.init_logit_bias)))
        self.origin = Origin()  # where it came from (its tokenizer files among them): set by the loader

    def encode_image(self, pixels: "torch.Tensor | Patches | Mapping", normalize: bool = False,
                     interpolate_pos: bool = False) -> torch.Tensor:
        """(B, E). `interpolate_pos=True` takes other image sizes (positional embeddings resized bicubically).
        A NaFlex tower (SigLIP 2) also takes a `Patches` batch, or transformers' Siglip2 image processor output
        as it is (a mapping with pixel_values, pixel_attention_mask and spatial_shapes)."""
        if self.visual is None:
            raise UserError(f"{self.cfg.name} is a text-only model: it has no vision tower")
        if isinstance(pixels, Mapping):
            pixels = Patches.from_hf(pixels)
        x = self.visual(pixels, interpolate_pos)
        return F.normalize(x.float(), dim=-1) if normalize else x  # in fp32: bf16 rows are unit length too

    def encode_text(self, ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        if self.text is None:
            raise UserError(f"{self.cfg.name} is a vision-only model: it has no text tower")
        x = self.text(ids)
        return F.normalize(x.float(), dim=-1) if normalize else x

    def scale(self) -> torch.Tensor:
        top = self.cfg.max_logit_scale
        return (self.logit_scale if top is None else self.logit_scale.clamp(max=top)).exp()

    def forward(self, pixels: torch.Tensor | None = None, ids: torch.Tensor | None = None,
                **open_clip_keywords) -> DualEncoderOutput:
        """`model(pixels, ids)` -> DualEncoderOutput, always. open_clip's interface (`model(image=...)` and its
        dict output) is `dualtower.compat.open_clip.OpenClipModel(model)`."""
        if open_clip_keywords:
            raise TypeError(f"forward takes (pixels, ids), not {', '.join(sorted(open_clip_keywords))}=: open_clip's "
                            "interface (model(image=..., text=...) and its dict output) is "
                            "dualtower.compat.open_clip.OpenClipModel(model)")
        if pixels is None or ids is None:
            raise TypeError("forward needs both pixels and ids (encode_image / encode_text embed one side)")
        return DualEncoderOutput(
            image_embeds=self.encode_image(pixels, normalize=True),
            text_embeds=self.encode_text(ids, normalize=True),
            logit_scale=self.scale(),
            logit_bias=self.logit_bias,
        )

    def _towers(self) -> list[nn.Module]:
        return [t for t in (self.visual, self.text) if t is not None]

    def _own_blocks(self, what: str, tower) -> list[nn.Module]:
        if isinstance(tower.cfg, HFTextConfig):
            raise UserError(f"{what} is not set on a transformers text encoder ({tower.cfg.model_type}): its own "
                            "dropout is in its config (hidden_dropout_prob, dropout), active in training")
        if isinstance(tower.cfg, ConvVisionConfig):
            raise UserError(f"{what} is set on transformer blocks; this vision tower is convolutional "
                            f"({tower.cfg.family}), and has none")
        return tower.blocks()

    def reparameterize(self) -> "DualEncoder":
        """Fold a convolutional tower's training-time branches into single convolutions, in place, for inference:
        the same outputs (within float rounding), fewer operations. The config records it (`folded`), so a saved
        folded model loads folded; it no longer trains. A ViT has nothing to fold and is left as it is."""
        if getattr(self.cfg.vision, "foldable", False):
            self.visual.reparameterize()
            self.cfg = self.cfg.replace(vision=self.visual.cfg)
        return self

    def set_dropout(self, prob: float) -> None:
        """Dropout on every residual branch of both towers (keyed per sample, see model.noise); 0 removes it."""
        towers = [t for t in self._towers() if prob > 0 or not isinstance(t.cfg, (HFTextConfig, ConvVisionConfig))]
        blocks = [b for t in towers for b in self._own_blocks("residual dropout", t)]
        for i, block in enumerate(blocks):
            block.drop1 = KeyedDropout(prob, salt=2 + 2 * i) if prob > 0 else nn.Identity()
            block.drop2 = KeyedDropout(prob, salt=3 + 2 * i) if prob > 0 else nn.Identity()

    def set_drop_path(self, vision: float, text: float = 0.0) -> None:
        """Stochastic depth on each tower, rising linearly from 0 at the first block to the given rate at the
        last (the rule of timm, EVA and InternViT); keyed per sample like dropout. 0 removes it."""
        salt = 1 << 20  # above every dropout salt
        for tower, rate in ((self.visual, vision), (self.text, text)):
            if tower is None or (rate == 0 and isinstance(tower.cfg, (HFTextConfig, ConvVisionConfig))):
                continue
            if hasattr(tower, "set_drop_path"):  # a convolutional tower with per-block residuals (ConvNeXt)
                salt = tower.set_drop_path(rate, salt)
                continue
            blocks = self._own_blocks("drop path", tower)
            for i, block in enumerate(blocks):
                p = rate * i / max(len(blocks) - 1, 1)
                block.path1 = KeyedDropPath(p, salt) if p > 0 else nn.Identity()
                block.path2 = KeyedDropPath(p, salt + 1) if p > 0 else nn.Identity()
                salt += 2

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for tower in self._towers():
            tower.set_grad_checkpointing(enable)

    @torch.no_grad()
    def init_weights(self) -> None:
        """open_clip's init scheme: scaled normal embeddings and projections, xavier qkv, zero biases;
        the text tower's blocks scaled by depth (as in OpenAI's CLIP `initialize_parameters`)."""
        v, t = self.visual, self.text
        if isinstance(v.cfg if v is not None else None, ConvVisionConfig):
            v.reset_parameters()  # the convolutional tower's own init (as open_clip's timm trunk keeps timm's)
        elif v is not None:
            scale = v.cfg.width ** -0.5
            if v.cls_token is not None:
                v.cls_token.normal_(std=scale)
            if v.reg_token is not None:
                v.reg_token.normal_(std=scale)
            v.pos_embed.normal_(std=scale)
            if isinstance(v.head, nn.Linear):
                v.head.weight.normal_(std=scale)
            if isinstance(v.pool, AttentionPool):
                v.pool.latent.normal_(std=scale)
            for block in v.transformer.blocks:
                nn.init.xavier_uniform_(block.attn.qkv.weight)
                _zero_bias(block.attn.qkv, block.attn.proj)
            _zero_bias(v.head)
        if t is None or isinstance(t.cfg, HFTextConfig):  # transformers initialises its encoder as its own
            return

        t.token_embed.weight.normal_(std=0.02)
        t.pos_embed.normal_(std=0.01)
        width, depth = t.cfg.width, t.cfg.depth
        proj_std = width ** -0.5 * (2 * depth) ** -0.5
        for block in t.transformer.blocks:
            attn, mlp = block.attn, block.mlp
            assert isinstance(attn, Attention)
            attn.qkv.weight.normal_(std=width ** -0.5)
            attn.proj.weight.normal_(std=proj_std)
            for fc in [getattr(mlp, n) for n in ("fc1", "fc1_g", "fc1_x") if hasattr(mlp, n)]:
                fc.weight.normal_(std=(2 * width) ** -0.5)
            mlp.fc2.weight.normal_(std=proj_std)
            _zero_bias(attn.qkv, attn.proj)
        if isinstance(t.head, nn.Linear):
            t.head.weight.normal_(std=width ** -0.5)
        _zero_bias(t.head)


def _vision_tower(cfg):
    if isinstance(cfg, ConvVisionConfig):
        import importlib

        module, name = _CONV_TOWERS[cfg.kind]
        return getattr(importlib.import_module(module, __package__), name)
    return VisionTower


_CONV_TOWERS = {"fastvit": (".fastvit", "FastViTTower"), "convnext": (".convnext", "ConvNeXtTower")}


def _text_tower(cfg):
    if isinstance(cfg, HFTextConfig):
        from .hf_text import HFTextTower

        return HFTextTower
    return TextTower


def _zero_bias(*linears: nn.Module) -> None:
    for linear in linears:
        if getattr(linear, "bias", None) is not None:
            linear.bias.zero_()
