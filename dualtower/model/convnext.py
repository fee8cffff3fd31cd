"""ConvNeXt vision towers (LAION's convnext CLIP models in open_clip): a convolutional tower behind the ViT's
interface (see model.conv_tower).

The architecture is ConvNeXt's (Liu et al. 2022, arXiv:2201.03545): a 4x4 stride-4 patchify convolution with
LayerNorm; four stages, each after the first entered through LayerNorm and a 2x2 stride-2 convolution, of blocks
that mix space with a depthwise 7x7 convolution and channels with a LayerNorm'd 4x MLP, scaled by a learned
per-channel layer scale, on a residual path; then average pooling, LayerNorm and the CLIP projection. Parameter
names follow timm's `convnext` (the vocabulary we keep for vision towers), so its state dicts map key for key;
open_clip holds the same trunk under `visual.trunk.` and the projection under `visual.head.`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConvNeXtConfig
from .conv_tower import ConvTower, LayerNorm2d, run_blocks
from .noise import KeyedDropPath


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """x + drop_path(gamma * mlp(norm(dwconv(x)))), the norm and MLP over channels-last positions."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, 4 * dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))
        self.drop_path: nn.Module = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(self.conv_dw(x).permute(0, 2, 3, 1))) * self.gamma
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class Stage(nn.Module):
    def __init__(self, cfg: ConvNeXtConfig, i: int):
        super().__init__()
        dim, eps = cfg.dims[i], cfg.norm_eps
        self.downsample = nn.Sequential(LayerNorm2d(cfg.dims[i - 1], eps=eps),
                                        nn.Conv2d(cfg.dims[i - 1], dim, 2, stride=2)) if i else nn.Identity()
        self.blocks = nn.Sequential(*(Block(dim, eps) for _ in range(cfg.layers[i])))
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_blocks(self, self.downsample(x))


class PreLogits(nn.Module):
    """The projection MLP's hidden layer (timm's head.pre_logits: fc, then GELU)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc = nn.Linear(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.fc(x))


class Head(nn.Module):
    """Average pooling, LayerNorm and the projection (timm's NormMlpClassifierHead: norm, pre_logits, fc)."""

    def __init__(self, cfg: ConvNeXtConfig, embed_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.pre_logits = PreLogits(cfg.width, cfg.head_hidden) if cfg.head_hidden else nn.Identity()
        self.fc = nn.Linear(cfg.head_hidden or cfg.width, embed_dim, bias=cfg.head_bias) if cfg.head else \
            nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pre_logits(self.norm(x.mean((2, 3)))))


class ConvNeXtTower(ConvTower):
    def __init__(self, cfg: ConvNeXtConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.stem = nn.Sequential(nn.Conv2d(3, cfg.dims[0], 4, stride=4), LayerNorm2d(cfg.dims[0], eps=cfg.norm_eps))
        self.stages = nn.Sequential(*(Stage(cfg, i) for i in range(len(cfg.dims))))
        self.head = Head(cfg, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """ConvNeXt's init: convolutions and linear layers truncated normal (std 0.02, biases 0), layer scales
        1e-6, LayerNorms 1 and 0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, Block):
                nn.init.constant_(m.gamma, 1e-6)

    def set_drop_path(self, rate: float, salt: int) -> int:
        """Stochastic depth on each block's residual, rising linearly from 0 at the first block to `rate` at the
        last over all stages (timm's rule); keyed per sample (model.noise). The next free salt."""
        blocks = [b for stage in self.stages for b in stage.blocks]
        for i, block in enumerate(blocks):
            p = rate * i / max(len(blocks) - 1, 1)
            block.drop_path = KeyedDropPath(p, salt + i) if p > 0 else nn.Identity()
        return salt + len(blocks)

    def pool_and_project(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)
