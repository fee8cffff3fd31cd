"""FastViT "MCi" vision towers (MobileCLIP and MobileCLIP 2 S0-S4): a convolutional tower behind the same
interface as the ViT (pixels -> pooled features -> projection; `features` per stage).

The architecture is FastViT's (Vasu et al. 2023, arXiv:2303.14189) as MobileCLIP uses it (Vasu et al. 2024,
arXiv:2311.17049): a MobileOne stem, four or five stages of RepMixer blocks (token mixing by depthwise
convolutions) with attention blocks in the last ones, each stage after the first entered through a large-kernel
downsampling convolution, a conditional positional encoding before the attention stages, a MobileOne final
convolution with squeeze-excite, average pooling and a linear projection. Parameter names follow timm's
`fastvit` (the vocabulary we keep for vision towers), so its state dicts map key for key.

Training uses the multi-branch form (model.reparam: parallel convolutions, each with its BatchNorm, and identity
branches); `reparameterize()` folds each into one convolution for inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import FastViTConfig
from .conv_tower import ConvTower, LayerNorm2d, run_blocks
from .reparam import ConditionalPosEnc, ConvBN, Foldable, LargeKernel, LayerScale2d, MobileOne, RepMixer


class ConvMlp(nn.Module):
    """A depthwise 7x7 ConvBN, then the 1x1 expansion, GELU and the 1x1 projection."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.conv = ConvBN(dim, dim, 7, groups=dim)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.conv(x))))


class ConvAttention(nn.Module):
    """Multi-head self-attention over the positions of a (B, C, H, W) map, heads of width 32, qkv without bias."""

    HEAD_WIDTH = 32

    def __init__(self, dim: int):
        super().__init__()
        self.heads = dim // self.HEAD_WIDTH
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        q, k, v = self.qkv(tokens).reshape(B, H * W, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, H * W, C)
        return self.proj(y).transpose(1, 2).reshape(B, C, H, W)


class RepMixerBlock(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float, folded: bool):
        super().__init__()
        self.token_mixer = RepMixer(dim, folded=folded)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))
        self.layer_scale = LayerScale2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.token_mixer(x)
        return x + self.layer_scale(self.mlp(x))


class AttentionBlock(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float, norm: str):
        super().__init__()
        self.norm = LayerNorm2d(dim, eps=1e-5) if norm == "layernorm" else nn.BatchNorm2d(dim)
        self.token_mixer = ConvAttention(dim)
        self.layer_scale_1 = LayerScale2d(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))
        self.layer_scale_2 = LayerScale2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale_1(self.token_mixer(self.norm(x)))
        return x + self.layer_scale_2(self.mlp(x))


class Downsample(nn.Module):
    """Into a stage: a depthwise 7x7 stride-2 large kernel widening the channels, then a 1x1 MobileOne."""

    def __init__(self, cin: int, cout: int, se: bool, act: bool, folded: bool):
        super().__init__()
        self.proj = nn.Sequential(LargeKernel(cin, cout, 7, 2, se, act, folded),
                                  MobileOne(cout, cout, 1, folded=folded))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Stage(nn.Module):
    def __init__(self, cfg: FastViTConfig, i: int):
        super().__init__()
        dim, folded = cfg.dims[i], cfg.folded
        self.downsample = Downsample(cfg.dims[i - 1], dim, cfg.se_downsample[i], cfg.down_act, folded) if i else \
            nn.Identity()
        self.pos_emb = ConditionalPosEnc(dim, folded=folded) if cfg.pos_conv[i] else nn.Identity()
        self.blocks = nn.Sequential(*(
            RepMixerBlock(dim, cfg.mlp_ratio, folded) if cfg.mixers[i] == "repmixer" else
            AttentionBlock(dim, cfg.mlp_ratio, cfg.attn_norm) for _ in range(cfg.layers[i])))
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_blocks(self, self.pos_emb(self.downsample(x)))


class Head(nn.Module):
    """Average pooling and the projection (timm's ClassifierHead: its Linear is `fc`; none: the pooled
    features are the embedding)."""

    def __init__(self, width: int, embed_dim: int, project: bool, bias: bool):
        super().__init__()
        self.fc = nn.Linear(width, embed_dim, bias=bias) if project else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


class FastViTTower(ConvTower):
    def __init__(self, cfg: FastViTConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        d0, folded = cfg.dims[0], cfg.folded
        self.stem = nn.Sequential(
            MobileOne(3, d0, 3, 2, scale=cfg.stem_scale, folded=folded),
            MobileOne(d0, d0, 3, 2, depthwise=True, scale=cfg.stem_scale, folded=folded),
            MobileOne(d0, d0, 1, folded=folded))
        self.stages = nn.Sequential(*(Stage(cfg, i) for i in range(len(cfg.dims))))
        self.final_conv = MobileOne(cfg.dims[-1], cfg.width, 3, depthwise=True, se=True, folded=folded)
        self.head = Head(cfg.width, embed_dim, cfg.head, cfg.head_bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """FastViT's init: linear layers truncated normal (std 0.02, biases 0); the MLP's 1x1 convolutions too;
        layer scales 1e-5; the other convolutions keep PyTorch's default."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, ConvMlp):
                for conv in (m.conv.conv, m.fc1, m.fc2):
                    nn.init.trunc_normal_(conv.weight, std=0.02)
                    if conv.bias is not None:
                        nn.init.zeros_(conv.bias)
            elif isinstance(m, LayerScale2d):
                nn.init.constant_(m.gamma, 1e-5)

    def reparameterize(self) -> None:
        """Fold every multi-branch module into one convolution, in place (eval mode: BatchNorm's running
        statistics are what is folded). The config says `folded=True` after."""
        self.eval()
        with torch.no_grad():
            for m in list(self.modules()):
                if isinstance(m, Foldable):
                    m.reparameterize()
        from dataclasses import replace

        self.cfg = replace(self.cfg, folded=True)

    def pool_and_project(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.final_conv(x))
