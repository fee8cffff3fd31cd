"""FastViT "MCi" vision towers (MobileCLIP and MobileCLIP 2 S0-S4): a convolutional tower behind the same
interface as the ViT (pixels -> pooled features -> projection; `features` per stage).

The architecture is FastViT's (Vasu et al. 2023, arXiv:2303.14189) as MobileCLIP uses it (Vasu et al. 2024,
arXiv:2311.17049): a MobileOne stem, four or five stages of RepMixer blocks (token mixing by depthwise
convolutions) with attention blocks in the last ones, each stage after the first entered through a large-kernel
downsampling convolution, a conditional positional encoding before the attention stages, a MobileOne final
convolution with squeeze-excite, average pooling and a linear projection. Parameter names follow timm's
`fastvit` (the vocabulary we keep for vision towers), so its state dicts map key for key.

Training uses the multi-branch form: parallel convolutions, each with its BatchNorm, and identity branches.
`reparameterize()` folds every branch of a module into one convolution with a bias (RepVGG's rule, Ding et al.
2021): BatchNorm (x - mean) / sqrt(var + eps) * gamma + beta after a convolution W is the convolution
W * gamma / sqrt(var + eps) with bias beta - mean * gamma / sqrt(var + eps); branches add, a 1x1 kernel is a
kxk kernel zero-padded, and an identity is the kernel with a 1 at the center of its own channel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import FastViTConfig
from ..errors import UserError


def _se_width(channels: int, ratio: float, divisor: int) -> int:
    """The squeeze-excite bottleneck: channels * ratio rounded to the nearest multiple of divisor (timm's
    make_divisible without its round-up limit)."""
    return max(divisor, int(channels * ratio + divisor / 2) // divisor * divisor)


class SqueezeExcite(nn.Module):
    """Hu et al. 2018: channel gates from the spatial mean through a ReLU bottleneck and a sigmoid."""

    def __init__(self, channels: int, ratio: float, divisor: int):
        super().__init__()
        width = _se_width(channels, ratio, divisor)
        self.fc1 = nn.Conv2d(channels, width, 1)
        self.fc2 = nn.Conv2d(width, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True))))  # (B, C, 1, 1)
        return x * gate.sigmoid()


class ConvBN(nn.Module):
    """A convolution without bias and its BatchNorm (timm's ConvNormAct without activation)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    def fold(self, kernel: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the one convolution this is in eval mode, its kernel zero-padded to `kernel`."""
        w, b = _fold_bn(self.conv.weight, self.bn)
        pad = (kernel - self.conv.kernel_size[0]) // 2
        return F.pad(w, [pad] * 4), b


def _fold_bn(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()  # (C,)
    return weight * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


def _identity_kernel(channels: int, groups: int, kernel: int, like: torch.Tensor) -> torch.Tensor:
    """The (C, C / groups, k, k) kernel of the identity: 1 at the center of each channel's own input."""
    per_group = channels // groups
    w = torch.zeros(channels, per_group, kernel, kernel, dtype=like.dtype, device=like.device)
    w[torch.arange(channels), torch.arange(channels) % per_group, kernel // 2, kernel // 2] = 1
    return w


def _folded_conv(cin: int, cout: int, kernel: int, stride: int, groups: int,
                 weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=True).to(weight.device, weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    return conv


class MobileOne(nn.Module):
    """MobileOne's block (Vasu et al. 2023, arXiv:2206.04040): `branches` kxk ConvBN, a 1x1 ConvBN (`scale`,
    for k > 1) and a BatchNorm on the input itself (`identity`, when the shape is kept), summed, then
    squeeze-excite and the activation. Folded: one kxk convolution with a bias (`reparam_conv`)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, depthwise: bool = False,
                 se: bool = False, act: bool = True, scale: bool = True, branches: int = 1, folded: bool = False):
        super().__init__()
        self.cin, self.cout, self.kernel, self.stride = cin, cout, kernel, stride
        self.groups = cin if depthwise else 1
        self.se = SqueezeExcite(cout, 1 / 16, 1) if se else nn.Identity()
        self.act = nn.GELU() if act else nn.Identity()
        if folded:
            self.reparam_conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=self.groups)
            return
        self.reparam_conv = None
        self.identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.conv_kxk = nn.ModuleList(ConvBN(cin, cout, kernel, stride, self.groups) for _ in range(branches)) \
            if branches else None
        self.conv_scale = ConvBN(cin, cout, 1, stride, self.groups) if kernel > 1 and scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.act(self.se(self.reparam_conv(x)))
        out = 0
        if self.identity is not None:
            out = self.identity(x)
        if self.conv_scale is not None:
            out = out + self.conv_scale(x)
        for branch in self.conv_kxk or ():
            out = out + branch(x)
        return self.act(self.se(out))

    def fold(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the one convolution the branches sum to (in eval mode)."""
        if self.reparam_conv is not None:
            return self.reparam_conv.weight, self.reparam_conv.bias
        parts = [b.fold(self.kernel) for b in self.conv_kxk or ()]
        if self.conv_scale is not None:
            parts.append(self.conv_scale.fold(self.kernel))
        if self.identity is not None:
            like = self.identity.weight
            parts.append(_fold_bn(_identity_kernel(self.cin, self.groups, self.kernel, like), self.identity))
        return sum(w for w, _ in parts), sum(b for _, b in parts)

    def reparameterize(self) -> None:
        if self.reparam_conv is None:
            w, b = self.fold()
            self.reparam_conv = _folded_conv(self.cin, self.cout, self.kernel, self.stride, self.groups, w, b)
            del self.identity, self.conv_kxk, self.conv_scale


class LargeKernel(nn.Module):
    """RepLKNet's large kernel (Ding et al. 2022): a kxk ConvBN beside a 3x3 ConvBN, then squeeze-excite and
    the activation (MCi's downsampling convolution). Folded: one kxk convolution."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, se: bool, act: bool, folded: bool = False):
        super().__init__()
        self.cin, self.cout, self.kernel, self.stride, self.groups = cin, cout, kernel, stride, cin  # depthwise
        self.se = SqueezeExcite(cout, 0.25, 8) if se else nn.Identity()
        self.act = nn.GELU() if act else nn.Identity()
        if folded:
            self.reparam_conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=cin)
            return
        self.reparam_conv = None
        self.large_conv = ConvBN(cin, cout, kernel, stride, cin)
        self.small_conv = ConvBN(cin, cout, 3, stride, cin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            out = self.reparam_conv(x)
        else:
            out = self.large_conv(x) + self.small_conv(x)
        return self.act(self.se(out))

    def reparameterize(self) -> None:
        if self.reparam_conv is None:
            (wl, bl), (ws, bs) = self.large_conv.fold(self.kernel), self.small_conv.fold(self.kernel)
            self.reparam_conv = _folded_conv(self.cin, self.cout, self.kernel, self.stride, self.groups,
                                             wl + ws, bl + bs)
            del self.large_conv, self.small_conv


class LayerScale2d(nn.Module):
    def __init__(self, dim: int, init: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim, 1, 1), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class RepMixer(nn.Module):
    """FastViT's token mixer: x + gamma * (mixer(x) - norm(x)), with mixer a depthwise MobileOne and norm a
    BatchNorm of the input (a MobileOne of its identity branch only). Folded: one depthwise convolution, the
    residual inside its kernel."""

    def __init__(self, dim: int, kernel: int = 3, folded: bool = False):
        super().__init__()
        self.dim, self.kernel = dim, kernel
        if folded:
            self.reparam_conv = nn.Conv2d(dim, dim, kernel, 1, kernel // 2, groups=dim)
            return
        self.reparam_conv = None
        self.norm = MobileOne(dim, dim, kernel, depthwise=True, act=False, scale=False, branches=0)
        self.mixer = MobileOne(dim, dim, kernel, depthwise=True, act=False)
        self.layer_scale = LayerScale2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        return x + self.layer_scale(self.mixer(x) - self.norm(x))

    def reparameterize(self) -> None:
        if self.reparam_conv is None:
            (wm, bm), (wn, bn) = self.mixer.fold(), self.norm.fold()
            gamma = self.layer_scale.gamma  # (C, 1, 1)
            w = _identity_kernel(self.dim, self.dim, self.kernel, wm) + gamma.unsqueeze(-1) * (wm - wn)
            self.reparam_conv = _folded_conv(self.dim, self.dim, self.kernel, 1, self.dim, w,
                                             gamma.flatten() * (bm - bn))
            del self.norm, self.mixer, self.layer_scale


class ConditionalPosEnc(nn.Module):
    """Conditional positional encoding (Chu et al. 2021): x + a depthwise 7x7 convolution of x. Folded: the
    residual inside the kernel."""

    def __init__(self, dim: int, kernel: int = 7, folded: bool = False):
        super().__init__()
        self.dim, self.kernel = dim, kernel
        if folded:
            self.reparam_conv = nn.Conv2d(dim, dim, kernel, 1, kernel // 2, groups=dim)
            return
        self.reparam_conv = None
        self.pos_enc = nn.Conv2d(dim, dim, kernel, 1, kernel // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        return x + self.pos_enc(x)

    def reparameterize(self) -> None:
        if self.reparam_conv is None:
            w = self.pos_enc.weight + _identity_kernel(self.dim, self.dim, self.kernel, self.pos_enc.weight)
            self.reparam_conv = _folded_conv(self.dim, self.dim, self.kernel, 1, self.dim, w, self.pos_enc.bias)
            del self.pos_enc


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


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


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
        x = self.pos_emb(self.downsample(x))
        if self.grad_checkpointing and self.training:
            from torch.utils.checkpoint import checkpoint

            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=False)
            return x
        return self.blocks(x)


class Head(nn.Module):
    """Average pooling and the projection (timm's ClassifierHead: its Linear is `fc`; none: the pooled
    features are the embedding)."""

    def __init__(self, width: int, embed_dim: int, project: bool, bias: bool):
        super().__init__()
        self.fc = nn.Linear(width, embed_dim, bias=bias) if project else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


class FastViTTower(nn.Module):
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

    def blocks(self) -> list[nn.Module]:
        """The units FSDP shards and checkpointing recomputes: the stages."""
        return list(self.stages)

    def set_grad_checkpointing(self, enable: bool) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def set_patch_dropout(self, prob: float) -> None:
        if prob > 0:
            raise UserError("patch dropout needs patch tokens; this vision tower is convolutional (it has none)")

    def reparameterize(self) -> None:
        """Fold every multi-branch module into one convolution, in place (eval mode: BatchNorm's running
        statistics are what is folded). The config says `folded=True` after."""
        self.eval()
        with torch.no_grad():
            for m in list(self.modules()):
                if isinstance(m, (MobileOne, LargeKernel, RepMixer, ConditionalPosEnc)):
                    m.reparameterize()
        from dataclasses import replace

        self.cfg = replace(self.cfg, folded=True)

    def _check(self, pixels: torch.Tensor, interpolate_pos: bool) -> None:
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise UserError(f"pixels must be (B, 3, H, W), got {tuple(pixels.shape)}")
        size = self.cfg.image_size
        if not interpolate_pos and pixels.shape[-2:] != (size, size):
            raise UserError(f"pixels are {tuple(pixels.shape[-2:])}, this model takes {size}x{size} (a convolutional "
                             "tower takes other sizes too, with interpolate_pos=True: it has no positions to resize)")

    def forward(self, pixels: torch.Tensor, interpolate_pos: bool = False) -> torch.Tensor:
        """pixels (B, 3, H, W) -> (B, E)."""
        if not isinstance(pixels, torch.Tensor):
            raise UserError("patch sequences (NaFlex input) need a NaFlex ViT; a convolutional tower takes pixels")
        self._check(pixels, interpolate_pos)
        x = self.stages(self.stem(pixels.to(self.dtype)))  # a bf16 model takes fp32 pixels
        return self.head(self.final_conv(x))  # (B, E)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def features(self, pixels: torch.Tensor, layers: tuple[int, ...] = (-1,), keep_cls: bool = True,
                 final_norm: bool = False, interpolate_pos: bool = False) -> list[torch.Tensor]:
        """Feature maps per stage as tokens (B, H * W, C), numbered like the ViT's hidden states: 0 the stem's
        output, i the output of stage i, negative from the end (-1 the last stage). There is no class token and
        no final norm, so `keep_cls` changes nothing and `final_norm=True` is refused."""
        if final_norm:
            raise UserError("a convolutional tower has no final norm to apply to its feature maps")
        n = len(self.stages)
        wanted = [layer + n + 1 if layer < 0 else layer for layer in layers]
        bad = [layer for layer, w in zip(layers, wanted) if not 0 <= w <= n]
        if bad:
            raise UserError(f"layers {bad} are outside this tower's stages 0..{n} (or -{n + 1}..-1): a convolutional "
                             "tower's features are chosen by stage, not by block")
        self._check(pixels, interpolate_pos)
        x = self.stem(pixels.to(self.dtype))
        states = [x]
        for stage in self.stages[: max(wanted)]:
            x = stage(x)
            states.append(x)
        return [states[w].flatten(2).transpose(1, 2) for w in wanted]
