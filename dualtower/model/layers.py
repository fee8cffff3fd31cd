"""The block and Transformer that both towers and every architecture share.

A block takes its parts as arguments; a part that is off is `nn.Identity()`, not an `if` in `forward`.
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint
import torch.nn.functional as F
from torch import nn


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


class LayerNormFp32(nn.LayerNorm):
    """LayerNorm computed in at least fp32 whatever the input dtype, cast back to it (as open_clip and OpenAI
    CLIP do for fp16/bf16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = _at_least_fp32(self.weight) if self.weight is not None else None
        bias = _at_least_fp32(self.bias) if self.bias is not None else None
        return F.layer_norm(_at_least_fp32(x), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class RMSNormFp32(nn.RMSNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(_at_least_fp32(x), self.normalized_shape, _at_least_fp32(self.weight), self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    if kind == "layernorm":
        return LayerNormFp32(dim, eps=eps)
    if kind == "rmsnorm":
        return RMSNormFp32(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}")


def make_act(kind: str) -> nn.Module:
    table = {"gelu": lambda: nn.GELU(), "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "quick_gelu": QuickGELU}
    if kind not in table:
        raise ValueError(f"unknown activation {kind!r}")
    return table[kind]()


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection, through `scaled_dot_product_attention`."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool, proj_bias: bool, causal: bool):
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, H, L, hd)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=self.causal)  # (B, H, L, hd)
        return self.proj(out.transpose(1, 2).reshape(B, L, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: nn.Module, bias: bool):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = act
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm residual block: x + ls(attn(norm(x))), then x + ls(mlp(norm(x)))."""

    def __init__(self, attn: nn.Module, mlp: nn.Module, norm1: nn.Module, norm2: nn.Module,
                 ls1: nn.Module, ls2: nn.Module):
        super().__init__()
        self.norm1, self.attn, self.ls1 = norm1, attn, ls1
        self.norm2, self.mlp, self.ls2 = norm2, mlp, ls2
        self.drop1: nn.Module = nn.Identity()  # residual-branch dropout, set for training (DualEncoder.set_dropout)
        self.drop2: nn.Module = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop2(self.ls2(self.mlp(self.norm2(x))))


class PostNormBlock(Block):
    """Post-norm residual block (the original Transformer's placement): norm(x + ls(attn(x)))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop1(self.ls1(self.attn(x))))
        return self.norm2(x + self.drop2(self.ls2(self.mlp(x))))


class Transformer(nn.Module):
    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


def build_transformer(cfg, causal: bool) -> Transformer:
    """One Transformer from a tower config (VisionConfig or TextConfig share these field names)."""

    def block() -> nn.Module:
        cls = PostNormBlock if cfg.post_norm else Block
        ls = (lambda: LayerScale(cfg.width, cfg.ls_init)) if cfg.ls_init else nn.Identity
        return cls(
            attn=Attention(cfg.width, cfg.heads, cfg.qkv_bias, cfg.proj_bias, causal),
            mlp=Mlp(cfg.width, cfg.mlp_dim, make_act(cfg.act), cfg.mlp_bias),
            norm1=make_norm(cfg.norm, cfg.width, cfg.norm_eps),
            norm2=make_norm(cfg.norm, cfg.width, cfg.norm_eps),
            ls1=ls(),
            ls2=ls(),
        )

    return Transformer([block() for _ in range(cfg.depth)])
