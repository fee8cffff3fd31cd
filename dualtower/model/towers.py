"""The two towers. Each is embed -> transformer -> pool -> project; only embed and pool differ."""

from __future__ import annotations

import torch
from torch import nn

from ..config import TextConfig, VisionConfig
from . import noise
from .layers import build_transformer, make_norm


class ClsPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


class MeanPool(nn.Module):
    """Mean over the patch tokens (the class token is left out)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 1:].mean(dim=1)


def _norm_or_identity(on: bool, cfg) -> nn.Module:
    return make_norm(cfg.norm, cfg.width, cfg.norm_eps) if on else nn.Identity()


class PatchDropout(nn.Module):
    """FLIP (Li et al. 2023): in training, keep a random subset of the patch tokens (the class token always)."""

    SALT = 1  # distinct from every KeyedDropout's salt

    def __init__(self, prob: float):
        super().__init__()
        if not 0.0 <= prob < 1.0:
            raise ValueError(f"patch dropout {prob} is not in [0, 1)")
        self.prob = prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.prob == 0.0:
            return x
        cls, patches = x[:, :1], x[:, 1:]  # (B, 1, D), (B, N, D)
        keep = max(1, int(patches.shape[1] * (1 - self.prob)))
        order = noise.uniform(tuple(patches.shape[:2]), self.SALT, x.device).argsort(dim=1)[:, :keep]  # (B, keep)
        kept = patches.gather(1, order.unsqueeze(-1).expand(-1, -1, patches.shape[2]))
        return torch.cat([cls, kept], dim=1)


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size, bias=cfg.patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(cfg.grid * cfg.grid + 1, cfg.width))
        self.patch_dropout: nn.Module = nn.Identity()  # set for training with `set_patch_dropout`
        self.norm_pre = _norm_or_identity(cfg.norm_pre, cfg)
        self.transformer = build_transformer(cfg, causal=False)
        self.norm_tokens = _norm_or_identity(cfg.final_norm == "before_pool", cfg)
        self.pool = ClsPool() if cfg.pool == "cls" else MeanPool()
        self.norm_pooled = _norm_or_identity(cfg.final_norm == "after_pool", cfg)
        self.head = nn.Linear(cfg.width, embed_dim, bias=cfg.head_bias)

    def set_patch_dropout(self, prob: float) -> None:
        self.patch_dropout = PatchDropout(prob) if prob > 0 else nn.Identity()

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be (B, 3, H, W), got {tuple(pixels.shape)}")
        size = self.cfg.image_size
        if pixels.shape[-2:] != (size, size):
            raise ValueError(f"pixels are {tuple(pixels.shape[-2:])}, this model takes {size}x{size}")
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)  # (B, N, D)
        cls = self.cls_token.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, D)
        return torch.cat([cls, x], dim=1) + self.pos_embed.to(x.dtype)  # (B, 1 + N, D)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.norm_pre(self.patch_dropout(self.embed(pixels)))
        x = self.norm_tokens(self.transformer(x))
        return self.head(self.norm_pooled(self.pool(x)))  # (B, E)


class TextTower(nn.Module):
    def __init__(self, cfg: TextConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos_embed = nn.Parameter(torch.zeros(cfg.context_length, cfg.width))
        self.transformer = build_transformer(cfg, causal=True)
        self.norm = make_norm(cfg.norm, cfg.width, cfg.norm_eps)
        self.head = nn.Linear(cfg.width, embed_dim, bias=cfg.head_bias)

    def eot_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Index of the first end-of-text token of each row; a row without one is an error."""
        if ids.ndim != 2:
            raise ValueError(f"token ids must be (B, L), got {tuple(ids.shape)}")
        if ids.shape[1] > self.cfg.context_length:
            raise ValueError(f"token ids have length {ids.shape[1]}, the context length is {self.cfg.context_length}")
        is_eot = ids == self.cfg.eot_id
        missing = (~is_eot.any(dim=1)).nonzero().flatten()
        if missing.numel():
            raise ValueError(f"text rows {missing.tolist()} have no end-of-text token (id {self.cfg.eot_id})")
        return is_eot.int().argmax(dim=1)  # argmax returns the first maximum

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        eot = self.eot_positions(ids)
        # Under the causal mask nothing after a row's end-of-text token changes its pooled state, so the
        # batch is computed only up to its longest sequence.
        length = int(eot.max()) + 1 if eot.numel() else 1
        x = self.token_embed(ids[:, :length]) + self.pos_embed[:length]  # (B, L, D)
        x = self.transformer(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), eot]  # (B, D)
        return self.head(self.norm(pooled))  # (B, E); the norm is per token, so pooling first is the same
