"""The two towers. Each is embed -> transformer -> pool -> project; only embed and pool differ."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TextConfig, VisionConfig
from ..errors import UserError
from ..naflex import Patches
from ..text_pool import pool_positions
from . import noise
from .layers import LayerNormFp32, Mlp, Rope2D, build_transformer, make_act, make_norm
from .resample import antialiased_bilinear, grid_positions

# Every pool takes the tokens (B, L, D) and, for padded patch sequences (NaFlex), their mask (B, L) bool (True
# for a real token); padding never enters the pooled vector.

class ClsPool(nn.Module):
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return x[:, 0]  # the class token is never padding


class MeanPool(nn.Module):
    """Mean over the patch tokens (a class token is left out)."""

    def __init__(self, prefix: int):
        super().__init__()
        self.prefix = prefix

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            return x[:, self.prefix:].mean(dim=1)
        keep = mask[:, self.prefix:, None].to(x.dtype)  # (B, N, 1)
        return (x[:, self.prefix:] * keep).sum(dim=1) / keep.sum(dim=1)


class AttentionPool(nn.Module):
    """Multi-head attention pooling (MAP, Lee et al. 2019; SigLIP's head): one learned query attends over all
    tokens, then a residual MLP: y = attn(latent, x); y + mlp(norm(y))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, act: nn.Module, norm: nn.Module):
        super().__init__()
        self.heads = heads
        self.latent = nn.Parameter(torch.zeros(dim))
        self.qkv = nn.Linear(dim, 3 * dim)  # rows: the query's projection, then the keys' and the values'
        self.proj = nn.Linear(dim, dim)
        self.norm = norm
        self.mlp = Mlp(dim, mlp_dim, act, bias=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, L, D = x.shape
        H = self.heads
        w, b = self.qkv.weight, self.qkv.bias
        q = F.linear(self.latent.to(x.dtype), w[:D], b[:D]).view(1, H, 1, D // H).expand(B, -1, -1, -1)  # (B, H, 1, hd)
        kv = F.linear(x, w[D:], b[D:]).view(B, L, 2, H, D // H).permute(2, 0, 3, 1, 4)  # (2, B, H, L, hd)
        keys = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, L)
        y = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=keys)  # (B, H, 1, hd)
        y = self.proj(y.reshape(B, D))
        return y + self.mlp(self.norm(y))


class MeanQueryPool(nn.Module):
    """InternVL-C's image head (its AttentionPoolingBlock): the mean of the tokens queries all tokens, with a
    LayerNorm on each of query, key and value input and biased q/k/v projections. Returns the heads' output
    (B, D); the tower's head is the block's output projection."""

    def __init__(self, dim: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.norm_q, self.norm_k, self.norm_v = (LayerNormFp32(dim, eps=eps) for _ in range(3))
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            raise UserError("InternVL-C's mean-query pool does not take padded patch sequences")
        B, L, D = x.shape
        H = self.heads
        q = self.q(self.norm_q(x.mean(dim=1, keepdim=True))).view(B, 1, H, D // H).transpose(1, 2)  # (B, H, 1, hd)
        k = self.k(self.norm_k(x)).view(B, L, H, D // H).transpose(1, 2)
        v = self.v(self.norm_v(x)).view(B, L, H, D // H).transpose(1, 2)
        return F.scaled_dot_product_attention(q, k, v).reshape(B, D)


def state_indices(layers: tuple[int, ...], count: int, what: str, hint: str = "") -> list[int]:
    """Indices 0..count of the states a tower's `features` returns (0 its input, i the output of unit i,
    negative from the end); any other is refused, naming `what` the states are."""
    wanted = [layer + count + 1 if layer < 0 else layer for layer in layers]
    bad = [layer for layer, w in zip(layers, wanted) if not 0 <= w <= count]
    if bad:
        raise UserError(f"layers {bad} are outside this tower's {what} 0..{count} (or -{count + 1}..-1){hint}")
    return wanted


def _norm_or_identity(on: bool, cfg) -> nn.Module:
    return make_norm(cfg.norm, cfg.width, cfg.norm_eps) if on else nn.Identity()


def _make_pool(cfg: VisionConfig, prefix: int) -> nn.Module:
    if cfg.pool == "cls":
        return ClsPool()
    if cfg.pool == "mean":
        return MeanPool(prefix)
    if cfg.pool == "mean_query":
        return MeanQueryPool(cfg.width, cfg.pool_heads or cfg.heads, cfg.pool_norm_eps)
    return AttentionPool(cfg.width, cfg.pool_heads or cfg.heads, cfg.pool_mlp_dim or cfg.mlp_dim, make_act(cfg.act),
                         make_norm(cfg.norm, cfg.width, cfg.norm_eps))


class PatchDropout(nn.Module):
    """FLIP (Li et al. 2023): in training, keep a random subset of the patch tokens (a class token always).
    Returns the tokens and the kept patch indices (B, keep), or None when nothing was dropped."""

    SALT = 1  # distinct from every KeyedDropout's salt

    def __init__(self, prob: float, prefix: int = 1):
        super().__init__()
        if not 0.0 <= prob < 1.0:
            raise UserError(f"patch dropout {prob} is not in [0, 1)")
        self.prob, self.prefix = prob, prefix

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.training or self.prob == 0.0:
            return x, None
        head, patches = x[:, :self.prefix], x[:, self.prefix:]  # (B, prefix, D), (B, N, D)
        keep = max(1, int(patches.shape[1] * (1 - self.prob)))
        order = noise.uniform(tuple(patches.shape[:2]), self.SALT, x.device).argsort(dim=1)[:, :keep]  # (B, keep)
        kept = patches.gather(1, order.unsqueeze(-1).expand(-1, -1, patches.shape[2]))
        return torch.cat([head, kept], dim=1), order


class NoPatchDropout(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x, None


class ConvBNAct(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=kernel, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.bn(self.conv(x)))


def _patch_embed(cfg: VisionConfig) -> nn.Module:
    """(B, 3, H, W) -> (B, D, H / p, W / p): one convolution per patch, or MobileCLIP-B's stem of three."""
    if cfg.stem == "mci":
        quarter = cfg.width // 4
        return nn.Sequential(ConvBNAct(3, quarter, 4), ConvBNAct(quarter, quarter, 2),
                             nn.Conv2d(quarter, cfg.width, 2, stride=2))
    return nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size, bias=cfg.patch_bias)


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.prefix = (1 if cfg.class_token else 0) + cfg.registers  # tokens before the patches
        self.pos_prefix = self.prefix if cfg.pos_prefix else 0  # of them, those with a learned position
        self.patch_embed = _patch_embed(cfg)
        self.patch_norm = _norm_or_identity(cfg.patch_norm, cfg)
        if cfg.class_token:
            self.cls_token = nn.Parameter(torch.zeros(cfg.width))
        else:
            self.register_parameter("cls_token", None)
        if cfg.registers:
            self.reg_token = nn.Parameter(torch.zeros(cfg.registers, cfg.width))
        else:
            self.register_parameter("reg_token", None)
        self.pos_embed = nn.Parameter(torch.zeros(self.pos_prefix + cfg.grid * cfg.grid, cfg.width))
        self.rope = Rope2D(cfg.width // cfg.heads, cfg.rope_ref_grid or cfg.grid, cfg.rope_temperature,
                           cfg.rope_offset, cfg.rope_indexing) if cfg.rope else None
        self.patch_dropout: nn.Module = NoPatchDropout()  # set for training with `set_patch_dropout`
        self.norm_pre = _norm_or_identity(cfg.norm_pre, cfg)
        self.transformer = build_transformer(cfg, causal=False, rope_prefix=self.prefix)
        self.norm_tokens = _norm_or_identity(cfg.final_norm == "before_pool", cfg)
        self.pool = _make_pool(cfg, self.prefix)
        self.norm_pooled = _norm_or_identity(cfg.final_norm == "after_pool", cfg)
        self.head = nn.Linear(cfg.width, embed_dim, bias=cfg.head_bias) if cfg.head else nn.Identity()
        self._pos_cache: dict[tuple, torch.Tensor] = {}

    def blocks(self) -> list[nn.Module]:
        return list(self.transformer.blocks)

    def set_grad_checkpointing(self, enable: bool) -> None:
        self.transformer.grad_checkpointing = enable

    def set_patch_dropout(self, prob: float) -> None:
        if prob > 0 and self.cfg.naflex:
            raise UserError("patch dropout is not supported on a NaFlex tower (its sequences are already "
                             "variable; lower the patch budget instead)")
        self.patch_dropout = PatchDropout(prob, self.prefix) if prob > 0 else NoPatchDropout()

    def pos_embed_for(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """(prefix + gh * gw, D): the learned positional embeddings for another patch grid, the patch part resized
        by `cfg.pos_resize` (align_corners=False, as HF's `interpolate_pos_encoding`), or for a NaFlex tower bilinearly
        with antialiasing (SigLIP 2's rule; a grid smaller than the learned one averages it down). Cached per grid
        while the weights are unchanged and no gradient is wanted, so a repeated size costs nothing. Traced
        (torch.export, ONNX export with dynamic height and width) it is one graph for every grid: no cache, no
        shortcut (a resize to the same grid is the identity)."""
        g = self.cfg.grid
        traced = torch.compiler.is_compiling()
        if not traced and (grid_h, grid_w) == (g, g):
            return self.pos_embed
        track = traced or (torch.is_grad_enabled() and self.pos_embed.requires_grad)
        key = (grid_h, grid_w, self.pos_embed._version, self.pos_embed.device, self.pos_embed.dtype)
        if not track and key in self._pos_cache:
            return self._pos_cache[key]
        p = self.pos_prefix
        patches = self.pos_embed[p:].reshape(1, g, g, -1).permute(0, 3, 1, 2)  # (1, D, g, g)
        if self.cfg.naflex:  # as matrix products: the same numbers, and a backward pass that is deterministic
            rows, cols = antialiased_bilinear(grid_h, g, patches), antialiased_bilinear(grid_w, g, patches)
            patches = (rows @ patches.float() @ cols.T).to(patches.dtype)  # (1, D, gh, gw)
        else:
            patches = F.interpolate(patches, size=(grid_h, grid_w), mode=self.cfg.pos_resize, align_corners=False)
        resized = torch.cat([self.pos_embed[:p], patches.permute(0, 2, 3, 1).reshape(grid_h * grid_w, -1)])
        if not track:
            if len(self._pos_cache) >= 16:
                self._pos_cache.clear()
            resized = self._pos_cache[key] = resized.detach()
        return resized

    def embed(self, pixels: torch.Tensor, interpolate_pos: bool = False
              ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Tokens (B, prefix + N, D) and the rotary angles of the patch grid (None without rotary embedding)."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise UserError(f"pixels must be (B, 3, H, W), got {tuple(pixels.shape)}")
        size = self.cfg.image_size
        if not interpolate_pos and pixels.shape[-2:] != (size, size):
            raise UserError(f"pixels are {tuple(pixels.shape[-2:])}, this model takes {size}x{size} "
                             "(interpolate_pos=True resizes the positional embeddings to other sizes)")
        x = self.patch_embed(pixels.to(self.pos_embed.dtype))  # (B, D, gh, gw); a bf16 model takes fp32
        gh, gw = x.shape[2], x.shape[3]
        pos = self.pos_embed_for(gh, gw)
        x = self.patch_norm(x.flatten(2).transpose(1, 2))  # (B, N, D)
        if not self.pos_prefix:  # positions for the patches alone (timm's no_embed_class): added before the prefix
            x = x + pos.to(x.dtype)
        B = x.shape[0]
        head = [] if self.cls_token is None else [self.cls_token.to(x.dtype).expand(B, 1, -1)]  # (B, 1, D)
        if self.reg_token is not None:
            head.append(self.reg_token.to(x.dtype).expand(B, -1, -1))  # (B, R, D)
        if head:
            x = torch.cat([*head, x], dim=1)  # (B, prefix + N, D)
        if self.pos_prefix:
            x = x + pos.to(x.dtype)
        rope = self.rope(gh, gw, x.device) if self.rope is not None else None
        return x, rope

    def embed_patches(self, patches: Patches) -> tuple[torch.Tensor, torch.Tensor | None]:
        """NaFlex input: tokens (B, L, D) and their mask (B, L) bool, None when no image is padded. L is the
        longest image's patch count: padding past it is cut, since no real token ever attends to padding."""
        if not self.cfg.naflex:
            raise UserError("patch sequences (NaFlex input) need a NaFlex tower; this one takes (B, 3, H, W) pixels")
        patches.check(self.cfg.patch_size)
        counts = patches.shapes.prod(dim=1)  # (B,)
        length = int(counts.max())
        weight = self.patch_embed.weight  # (D, 3, p, p)
        flat = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)  # (D, p * p * 3): a patch's (p, p, C) order
        values = patches.values[:, :length].to(device=weight.device, dtype=weight.dtype)
        x = self.patch_norm(F.linear(values, flat, self.patch_embed.bias))  # (B, L, D)
        pos = x.new_empty(x.shape)
        shapes = patches.shapes.to(x.device)
        for gh, gw in torch.unique(patches.shapes, dim=0).tolist():  # each image's grid resampled once per shape
            grid = self.pos_embed_for(gh, gw).to(x.dtype)  # (gh * gw, D)
            rows = (shapes == torch.tensor([gh, gw], device=x.device)).all(dim=1)
            # Padding positions take the grid's first position (as transformers does); they are masked anyway.
            pos[rows] = torch.cat([grid, grid[:1].expand(length - gh * gw, -1)])
        x = x + pos
        if bool((counts == length).all()):
            return x, None
        return x, torch.arange(length, device=x.device)[None, :] < counts.to(x.device)[:, None]

    def _tokens(self, pixels: "torch.Tensor | Patches", interpolate_pos: bool):
        """Embedded, patch-dropped and pre-normed tokens, with the rotary angles of the kept patches and the
        padding mask of NaFlex input (None otherwise)."""
        if isinstance(pixels, Patches):
            x, mask = self.embed_patches(pixels)
            return self.norm_pre(x), None, mask
        x, rope = self.embed(pixels, interpolate_pos)
        x, kept = self.patch_dropout(x)
        if rope is not None and kept is not None:
            rope = tuple(r[kept].unsqueeze(1) for r in rope)  # (B, 1, keep, hd) per sample
        return self.norm_pre(x), rope, None

    def forward(self, pixels: "torch.Tensor | Patches", interpolate_pos: bool = False) -> torch.Tensor:
        """pixels: (B, 3, H, W), or for a NaFlex tower a `Patches` batch."""
        return self.encode_tokens(*self._tokens(pixels, interpolate_pos))

    def encode_tokens(self, x: torch.Tensor, rope, mask: torch.Tensor | None) -> torch.Tensor:
        """Pre-normed tokens (B, L, D) -> (B, E): the transformer, the final norm, pooling, the head. `mask` (B, L)
        bool marks real tokens (None: all are)."""
        keys = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, L)
        x = self.norm_tokens(self.transformer(x, rope, keys))
        return self.head(self.norm_pooled(self.pool(x, mask)))  # (B, E)

    def encode_patch_graph(self, values: torch.Tensor, mask: torch.Tensor, shapes: torch.Tensor) -> torch.Tensor:
        """A NaFlex batch without checks or data-dependent steps (what an exported graph runs): values (B, N,
        p * p * 3), mask (B, N) 1 for a patch, shapes (B, 2) each grid -> (B, E). Each image's positions are
        resampled in one batched product (`grid_positions`) instead of once per distinct grid; padding is always
        masked. Equal to `forward(Patches(...))` within float rounding (tested)."""
        weight = self.patch_embed.weight  # (D, 3, p, p)
        flat = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)  # (D, p * p * 3)
        x = self.patch_norm(F.linear(values.to(weight.dtype), flat, self.patch_embed.bias))  # (B, N, D)
        x = x + grid_positions(self.pos_embed[self.pos_prefix:], self.cfg.grid, shapes, values.shape[1]).to(x.dtype)
        return self.encode_tokens(self.norm_pre(x), None, mask > 0)

    def features(self, pixels: torch.Tensor, layers: tuple[int, ...] = (-1,), keep_cls: bool = True,
                 final_norm: bool = False, interpolate_pos: bool = False) -> list[torch.Tensor]:
        """Hidden states for a multimodal LLM: one (B, L, D) tensor per requested layer.

        Layers are numbered like HF's `hidden_states`: 0 is the transformer's input (after the pre-norm), i the
        output of block i, negative from the end (-1 the last block, -2 the one before, LLaVA's choice).
        `final_norm` applies the tower's final norm to every token; `keep_cls=False` drops the class token.
        """
        wanted = state_indices(layers, len(self.transformer.blocks), "hidden states")
        x, rope, mask = self._tokens(pixels, interpolate_pos)
        keys = None if mask is None else mask[:, None, None, :]
        states = [x]
        for block in self.transformer.blocks[: max(wanted)]:
            x = block(x, rope, keys)
            states.append(x)
        norm = self.norm_tokens if self.cfg.final_norm == "before_pool" else self.norm_pooled
        out = [norm(states[w]) if final_norm else states[w] for w in wanted]
        return out if keep_cls else [t[:, self.prefix:] for t in out]


class TextTower(nn.Module):
    def __init__(self, cfg: TextConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos_embed = nn.Parameter(torch.zeros(cfg.context_length, cfg.width))
        self.transformer = build_transformer(cfg, causal=cfg.causal)
        self.norm = make_norm(cfg.norm, cfg.width, cfg.norm_eps)
        self.head = nn.Linear(cfg.width, embed_dim, bias=cfg.head_bias) if cfg.head else nn.Identity()

    def blocks(self) -> list[nn.Module]:
        return list(self.transformer.blocks)

    def set_grad_checkpointing(self, enable: bool) -> None:
        self.transformer.grad_checkpointing = enable

    def token_table(self) -> nn.Embedding:
        return self.token_embed

    def pool_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """The position each row is pooled at (`text_pool.pool_positions`, the rule every runtime shares)."""
        return pool_positions(ids, self.cfg)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: (B, L) on any device. Ids on the CPU for a tower elsewhere are checked and trimmed on the CPU
        and moved after, so that nothing waits on the accelerator (on one, the checks must read back)."""
        at = self.pool_positions(ids)
        # Under the causal mask nothing after a row's pooled token changes its state, so the batch is
        # computed only up to its longest sequence. Without the mask every position counts.
        length = (int(at.max()) + 1 if at.numel() else 1) if self.cfg.causal else ids.shape[1]
        ids = ids[:, :length]
        if ids.device != self.pos_embed.device:
            ids, at = ids.to(self.pos_embed.device), at.to(self.pos_embed.device)
        return self.encode_at(ids, at)

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """Without checks or trimming (what an exported graph runs): pooled where `text_pool` says."""
        return self.encode_at(ids, pool_positions(ids, self.cfg, check=False))

    def encode_at(self, ids: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """ids (B, L) pooled at positions `at` (B,), without checks or trimming (what an exported graph runs)."""
        x = self.token_embed(ids) + self.pos_embed[: ids.shape[1]]  # (B, L, D)
        x = self.transformer(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), at]  # (B, D)
        return self.head(self.norm(pooled))  # (B, E); the norm is per token, so pooling first is the same
