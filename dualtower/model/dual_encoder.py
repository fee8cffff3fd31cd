"""The dual encoder: two towers mapping images and texts into one space, compared by scaled cosine similarity."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .layers import Attention, Mlp
from .noise import KeyedDropout
from .towers import TextTower, VisionTower

# CLIP (Radford et al. 2021) clips the learned temperature so logits are scaled by at most 100.
MAX_LOGIT_SCALE = math.log(100)


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
        self.visual = VisionTower(cfg.vision, cfg.embed_dim)
        self.text = TextTower(cfg.text, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        self.logit_bias = None if cfg.init_logit_bias is None else nn.Parameter(torch.tensor(float(cfg.init_logit_bias)))

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False, interpolate_pos: bool = False
                     ) -> torch.Tensor:
        """(B, E). `interpolate_pos=True` takes other image sizes (positional embeddings resized bicubically)."""
        x = self.visual(pixels, interpolate_pos)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.text(ids)
        return F.normalize(x, dim=-1) if normalize else x

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor) -> DualEncoderOutput:
        return DualEncoderOutput(
            image_embeds=self.encode_image(pixels, normalize=True),
            text_embeds=self.encode_text(ids, normalize=True),
            logit_scale=self.scale(),
            logit_bias=self.logit_bias,
        )

    def set_dropout(self, prob: float) -> None:
        """Dropout on every residual branch of both towers (keyed per sample, see model.noise); 0 removes it."""
        blocks = [*self.visual.transformer.blocks, *self.text.transformer.blocks]
        for i, block in enumerate(blocks):
            block.drop1 = KeyedDropout(prob, salt=2 + 2 * i) if prob > 0 else nn.Identity()
            block.drop2 = KeyedDropout(prob, salt=3 + 2 * i) if prob > 0 else nn.Identity()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.transformer.grad_checkpointing = enable
        self.text.transformer.grad_checkpointing = enable

    @torch.no_grad()
    def init_weights(self) -> None:
        """open_clip's init scheme: scaled normal embeddings and projections, xavier qkv, zero biases;
        the text tower's blocks scaled by depth (as in OpenAI's CLIP `initialize_parameters`)."""
        v, t = self.visual, self.text
        scale = v.cfg.width ** -0.5
        v.cls_token.normal_(std=scale)
        v.pos_embed.normal_(std=scale)
        v.head.weight.normal_(std=scale)
        for block in v.transformer.blocks:
            nn.init.xavier_uniform_(block.attn.qkv.weight)
            _zero_bias(block.attn.qkv, block.attn.proj)

        t.token_embed.weight.normal_(std=0.02)
        t.pos_embed.normal_(std=0.01)
        width, depth = t.cfg.width, t.cfg.depth
        proj_std = width ** -0.5 * (2 * depth) ** -0.5
        for block in t.transformer.blocks:
            attn, mlp = block.attn, block.mlp
            assert isinstance(attn, Attention) and isinstance(mlp, Mlp)
            attn.qkv.weight.normal_(std=width ** -0.5)
            attn.proj.weight.normal_(std=proj_std)
            mlp.fc1.weight.normal_(std=(2 * width) ** -0.5)
            mlp.fc2.weight.normal_(std=proj_std)
            _zero_bias(attn.qkv, attn.proj)
        t.head.weight.normal_(std=width ** -0.5)
        for head in (v.head, t.head):
            _zero_bias(head)


def _zero_bias(*linears: nn.Linear) -> None:
    for linear in linears:
        if linear.bias is not None:
            linear.bias.zero_()
