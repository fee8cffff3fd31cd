"""The block and Transformer that both towers and every architecture share.

A block takes its parts as arguments; a part that is off is `nn.Identity()`, not an `if` in `forward`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from . import noise


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
    raise UserError(f"unknown norm {kind!r}")


def make_act(kind: str) -> nn.Module:
    table = {"gelu": lambda: nn.GELU(), "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "quick_gelu": QuickGELU}
    if kind not in table:
        raise UserError(f"unknown activation {kind!r}")
    return table[kind]()


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class QVBiasLinear(nn.Module):
    """The fused qkv projection with biases on q and v only (EVA, BEiT): k's bias is a fixed zero."""

    def __init__(self, dim: int, out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out, dim))
        self.q_bias = nn.Parameter(torch.zeros(out // 3))
        self.v_bias = nn.Parameter(torch.zeros(out // 3))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)  # nn.Linear's default

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        return F.linear(x, self.weight, bias)


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], prefix: int) -> torch.Tensor:
    """Rotate (B, H, L, hd) queries or keys by 2-D rotary angles; the first `prefix` tokens (class token) are
    left as they are. `rope` is (sin, cos), each (N, hd) or (B, 1, N, hd), channels in interleaved pairs."""
    sin, cos = rope
    head, rest = x[:, :, :prefix], x[:, :, prefix:]
    pairs = rest.unflatten(-1, (-1, 2))
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)  # (x0, x1) -> (-x1, x0)
    out = (rest * cos + rotated * sin).to(x.dtype)
    return torch.cat([head, out], dim=2) if prefix else out


class Rope2D(nn.Module):
    """Axial 2-D rotary position embedding for the patch grid (EVA-02): half the channel pairs rotate with the
    row, half with the column. Positions are rescaled to `ref_grid` (the pretraining grid), so other image
    sizes keep the same angular range. Angles are computed in fp32 and cached per grid.

    Two conventions, both timm's: EVA-02 counts patches from 0 and gives the first half of the pairs to the
    row ("ij"); Perception Encoder counts from `offset` 1 and gives the first half to the column ("xy")."""

    def __init__(self, head_dim: int, ref_grid: int, temperature: float, offset: float = 0.0,
                 indexing: str = "ij"):
        super().__init__()
        if head_dim % 4:
            raise UserError(f"2-D rotary embedding needs a head width divisible by 4, got {head_dim}")
        self.bands, self.temperature, self.ref_grid = head_dim // 4, temperature, ref_grid
        self.offset, self.columns_first = offset, indexing == "xy"
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, grid_h: int, grid_w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.compiler.is_compiling():  # traced with a symbolic grid: part of the graph, never cached
            return self._angles(grid_h, grid_w, device)
        key = (grid_h, grid_w, device)
        if key not in self._cache:  # computed on the CPU in fp32 (never on the meta device a model is built on)
            if len(self._cache) >= 16:  # bounded, like the tower's resized positional embeddings
                self._cache.clear()
            sin, cos = self._angles(grid_h, grid_w, torch.device("cpu"))
            self._cache[key] = (sin.to(device), cos.to(device))
        return self._cache[key]

    def _angles(self, grid_h, grid_w, device) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = 1.0 / self.temperature ** (torch.arange(self.bands, dtype=torch.float32, device=device) / self.bands)
        rows = (torch.arange(grid_h, dtype=torch.float32, device=device) + self.offset) / grid_h * self.ref_grid
        cols = (torch.arange(grid_w, dtype=torch.float32, device=device) + self.offset) / grid_w * self.ref_grid
        grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1)  # (gh, gw, 2): row, column
        if self.columns_first:
            grid = grid.flip(-1)
        angles = (grid[..., None] * freqs).flatten(0, 1).flatten(1)  # (N, 2 * bands): first axis, then second
        angles = angles.repeat_interleave(2, dim=-1)  # (N, head_dim): both channels of a pair share an angle
        return angles.sin(), angles.cos()


class Attention(nn.Module):
    """Multi-head self-attention through `scaled_dot_product_attention`.

    Parts (Identity when off): `q_norm`/`k_norm` over the full width before the heads split (InternViT-6B),
    `q_head_norm`/`k_head_norm` per head, `inner_norm` on the heads' output before the projection (EVA-02's
    sub-LN). `qkv` is one fused projection (nn.Linear, or QVBiasLinear). Rotary angles, when given, rotate the
    queries and keys of every token after the first `rope_prefix`.
    """

    def __init__(self, dim: int, heads: int, qkv: nn.Module, proj: nn.Module, causal: bool,
                 q_norm: nn.Module | None = None, k_norm: nn.Module | None = None,
                 q_head_norm: nn.Module | None = None, k_head_norm: nn.Module | None = None,
                 inner_norm: nn.Module | None = None, rope_prefix: int = 0):
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.rope_prefix = rope_prefix
        self.qkv, self.proj = qkv, proj
        self.q_norm, self.k_norm = q_norm or nn.Identity(), k_norm or nn.Identity()
        self.q_head_norm, self.k_head_norm = q_head_norm or nn.Identity(), k_head_norm or nn.Identity()
        self.inner_norm = inner_norm or nn.Identity()

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """`mask`: (B, 1, 1, L) bool, False for keys no query may attend to (padding)."""
        B, L, D = x.shape
        H = self.heads
        qkv = self.qkv(x).view(B, L, 3, D)
        q = self.q_head_norm(self.q_norm(qkv[:, :, 0]).view(B, L, H, D // H).transpose(1, 2))  # (B, H, L, hd)
        k = self.k_head_norm(self.k_norm(qkv[:, :, 1]).view(B, L, H, D // H).transpose(1, 2))
        v = qkv[:, :, 2].view(B, L, H, D // H).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, rope, self.rope_prefix), apply_rope(k, rope, self.rope_prefix)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal)  # (B, H, L, hd)
        return self.proj(self.inner_norm(out.transpose(1, 2).reshape(B, L, D)))


class Mlp(nn.Module):
    """fc1 -> act -> norm (Identity unless sub-LN) -> fc2."""

    def __init__(self, dim: int, hidden: int, act: nn.Module, bias: bool, norm: nn.Module | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = act
        self.norm = norm or nn.Identity()
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(self.act(self.fc1(x))))


class SwiGLU(nn.Module):
    """Gated MLP (Shazeer 2020): fc2(norm(silu(fc1_g x) * fc1_x x)); EVA-02 puts a norm (sub-LN) before fc2."""

    def __init__(self, dim: int, hidden: int, bias: bool, norm: nn.Module | None = None):
        super().__init__()
        self.fc1_g = nn.Linear(dim, hidden, bias=bias)
        self.fc1_x = nn.Linear(dim, hidden, bias=bias)
        self.norm = norm or nn.Identity()
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(F.silu(self.fc1_g(x)) * self.fc1_x(x)))


class Block(nn.Module):
    """Pre-norm residual block: x + ls(attn(norm(x))), then x + ls(mlp(norm(x))).

    `drop1`/`drop2` (residual dropout) and `path1`/`path2` (drop path) are Identity until training sets them.
    """

    def __init__(self, attn: nn.Module, mlp: nn.Module, norm1: nn.Module, norm2: nn.Module,
                 ls1: nn.Module, ls2: nn.Module):
        super().__init__()
        self.norm1, self.attn, self.ls1 = norm1, attn, ls1
        self.norm2, self.mlp, self.ls2 = norm2, mlp, ls2
        self.drop1: nn.Module = nn.Identity()  # residual-branch dropout (DualEncoder.set_dropout)
        self.drop2: nn.Module = nn.Identity()
        self.path1: nn.Module = nn.Identity()  # drop path (DualEncoder.set_drop_path)
        self.path2: nn.Module = nn.Identity()

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.path1(self.drop1(self.ls1(self.attn(self.norm1(x), rope, mask))))
        return x + self.path2(self.drop2(self.ls2(self.mlp(self.norm2(x)))))


class PostNormBlock(Block):
    """Post-norm residual block (the original Transformer's placement): norm(x + ls(attn(x)))."""

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm1(x + self.path1(self.drop1(self.ls1(self.attn(x, rope, mask)))))
        return self.norm2(x + self.path2(self.drop2(self.ls2(self.mlp(x)))))


class Transformer(nn.Module):
    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                x = noise.checkpoint(block, x, rope, mask)  # the recompute draws the forward's noise
            else:
                x = block(x, rope, mask)
        return x


def build_block(cfg, causal: bool, rope_prefix: int = 0) -> Block:
    """One block from a tower config (VisionConfig and TextConfig share these field names)."""
    D, H = cfg.width, cfg.heads

    def norm(dim: int) -> nn.Module:
        return make_norm(cfg.norm, dim, cfg.norm_eps)

    if cfg.qkv_bias and not cfg.k_bias:
        qkv: nn.Module = QVBiasLinear(D, 3 * D)
    else:
        qkv = nn.Linear(D, 3 * D, bias=cfg.qkv_bias)
    full, head = cfg.qk_norm == "full", cfg.qk_norm == "head"
    attn = Attention(
        D, H, qkv, nn.Linear(D, D, bias=cfg.proj_bias), causal,
        q_norm=norm(D) if full else None, k_norm=norm(D) if full else None,
        q_head_norm=norm(D // H) if head else None, k_head_norm=norm(D // H) if head else None,
        inner_norm=norm(D) if cfg.attn_norm else None, rope_prefix=rope_prefix,
    )
    mlp_norm = norm(cfg.mlp_dim) if cfg.mlp_norm else None
    if cfg.mlp_type == "swiglu":
        mlp: nn.Module = SwiGLU(D, cfg.mlp_dim, cfg.mlp_bias, mlp_norm)
    else:
        mlp = Mlp(D, cfg.mlp_dim, make_act(cfg.act), cfg.mlp_bias, mlp_norm)
    ls = (lambda: LayerScale(D, cfg.ls_init)) if cfg.ls_init else nn.Identity
    cls = PostNormBlock if cfg.post_norm else Block
    return cls(attn=attn, mlp=mlp, norm1=norm(D), norm2=norm(D), ls1=ls(), ls2=ls())


def build_transformer(cfg, causal: bool, rope_prefix: int = 0) -> Transformer:
    return Transformer([build_block(cfg, causal, rope_prefix) for _ in range(cfg.depth)])
