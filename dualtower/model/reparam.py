"""Reparameterizable convolutions (FastViT's and MobileOne's blocks, see model.fastvit): each trains as several
branches and folds into one convolution with a bias for inference (`reparameterize()`), by RepVGG's rule (Ding et
al. 2021): BatchNorm (x - mean) / sqrt(var + eps) * gamma + beta after a convolution W is the convolution
W * gamma / sqrt(var + eps) with bias beta - mean * gamma / sqrt(var + eps); branches add, a 1x1 kernel is a kxk
kernel zero-padded, and an identity is the kernel with a 1 at the center of its own channel. Parameter names are
timm's (`conv_kxk`, `conv_scale`, `identity`, `large_conv`, `reparam_conv`), folded or not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """A biased convolution padded to keep the size (at stride 1): what every block is once folded."""
    return nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups)


class Foldable(nn.Module):
    """A block that trains as `branches` and runs folded as one convolution, `reparam_conv` (None until then),
    each followed by `after`. A subclass names its training-time modules in BRANCHES and gives the one kernel
    and bias they sum to (`fold_branches`)."""

    BRANCHES: tuple[str, ...] = ()

    def _shape(self, cin: int, cout: int, kernel: int, stride: int, groups: int, folded: bool) -> bool:
        """Records the folded convolution's shape, builds it when `folded`; True when it did."""
        self.cin, self.cout, self.kernel, self.stride, self.groups = cin, cout, kernel, stride, groups
        self.reparam_conv = _conv(cin, cout, kernel, stride, groups) if folded else None
        return folded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after(self.reparam_conv(x) if self.reparam_conv is not None else self.branches(x))

    def after(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def branches(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def fold_branches(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def fold(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the one convolution this block's branches are (in eval mode)."""
        if self.reparam_conv is not None:
            return self.reparam_conv.weight, self.reparam_conv.bias
        return self.fold_branches()

    def reparameterize(self) -> None:
        if self.reparam_conv is None:
            weight, bias = self.fold_branches()
            conv = _conv(self.cin, self.cout, self.kernel, self.stride, self.groups).to(weight.device, weight.dtype)
            with torch.no_grad():
                conv.weight.copy_(weight)
                conv.bias.copy_(bias)
            self.reparam_conv = conv
            for name in self.BRANCHES:
                delattr(self, name)


class MobileOne(Foldable):
    """MobileOne's block (Vasu et al. 2023, arXiv:2206.04040): `branches` kxk ConvBN, a 1x1 ConvBN (`scale`,
    for k > 1) and a BatchNorm on the input itself (`identity`, when the shape is kept), summed, then
    squeeze-excite and the activation."""

    BRANCHES = ("identity", "conv_kxk", "conv_scale")

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, depthwise: bool = False,
                 se: bool = False, act: bool = True, scale: bool = True, branches: int = 1, folded: bool = False):
        super().__init__()
        self.se = SqueezeExcite(cout, 1 / 16, 1) if se else nn.Identity()
        self.act = nn.GELU() if act else nn.Identity()
        if self._shape(cin, cout, kernel, stride, cin if depthwise else 1, folded):
            return
        self.identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.conv_kxk = nn.ModuleList(ConvBN(cin, cout, kernel, stride, self.groups) for _ in range(branches)) \
            if branches else None
        self.conv_scale = ConvBN(cin, cout, 1, stride, self.groups) if kernel > 1 and scale else None

    def branches(self, x: torch.Tensor) -> torch.Tensor:
        out = 0
        if self.identity is not None:
            out = self.identity(x)
        if self.conv_scale is not None:
            out = out + self.conv_scale(x)
        for branch in self.conv_kxk or ():
            out = out + branch(x)
        return out

    def after(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.se(x))

    def fold_branches(self) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [b.fold(self.kernel) for b in self.conv_kxk or ()]
        if self.conv_scale is not None:
            parts.append(self.conv_scale.fold(self.kernel))
        if self.identity is not None:
            like = self.identity.weight
            parts.append(_fold_bn(_identity_kernel(self.cin, self.groups, self.kernel, like), self.identity))
        return sum(w for w, _ in parts), sum(b for _, b in parts)


class LargeKernel(Foldable):
    """RepLKNet's large kernel (Ding et al. 2022): a kxk ConvBN beside a 3x3 ConvBN, then squeeze-excite and
    the activation (MCi's downsampling convolution); depthwise."""

    BRANCHES = ("large_conv", "small_conv")

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, se: bool, act: bool, folded: bool = False):
        super().__init__()
        self.se = SqueezeExcite(cout, 0.25, 8) if se else nn.Identity()
        self.act = nn.GELU() if act else nn.Identity()
        if self._shape(cin, cout, kernel, stride, cin, folded):
            return
        self.large_conv = ConvBN(cin, cout, kernel, stride, cin)
        self.small_conv = ConvBN(cin, cout, 3, stride, cin)

    def branches(self, x: torch.Tensor) -> torch.Tensor:
        return self.large_conv(x) + self.small_conv(x)

    def after(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.se(x))

    def fold_branches(self) -> tuple[torch.Tensor, torch.Tensor]:
        (wl, bl), (ws, bs) = self.large_conv.fold(self.kernel), self.small_conv.fold(self.kernel)
        return wl + ws, bl + bs


class LayerScale2d(nn.Module):
    def __init__(self, dim: int, init: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim, 1, 1), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class RepMixer(Foldable):
    """FastViT's token mixer: x + gamma * (mixer(x) - norm(x)), with mixer a depthwise MobileOne and norm a
    BatchNorm of the input (a MobileOne of its identity branch only). Folded: one depthwise convolution, the
    residual inside its kernel."""

    BRANCHES = ("norm", "mixer", "layer_scale")

    def __init__(self, dim: int, kernel: int = 3, folded: bool = False):
        super().__init__()
        if self._shape(dim, dim, kernel, 1, dim, folded):
            return
        self.norm = MobileOne(dim, dim, kernel, depthwise=True, act=False, scale=False, branches=0)
        self.mixer = MobileOne(dim, dim, kernel, depthwise=True, act=False)
        self.layer_scale = LayerScale2d(dim)

    def branches(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer_scale(self.mixer(x) - self.norm(x))

    def fold_branches(self) -> tuple[torch.Tensor, torch.Tensor]:
        (wm, bm), (wn, bn) = self.mixer.fold(), self.norm.fold()
        gamma = self.layer_scale.gamma  # (C, 1, 1)
        w = _identity_kernel(self.cin, self.groups, self.kernel, wm) + gamma.unsqueeze(-1) * (wm - wn)
        return w, gamma.flatten() * (bm - bn)


class ConditionalPosEnc(Foldable):
    """Conditional positional encoding (Chu et al. 2021): x + a depthwise 7x7 convolution of x. Folded: the
    residual inside the kernel."""

    BRANCHES = ("pos_enc",)

    def __init__(self, dim: int, kernel: int = 7, folded: bool = False):
        super().__init__()
        if self._shape(dim, dim, kernel, 1, dim, folded):
            return
        self.pos_enc = _conv(dim, dim, kernel, groups=dim)

    def branches(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pos_enc(x)

    def fold_branches(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.pos_enc.weight
        return w + _identity_kernel(self.cin, self.groups, self.kernel, w), self.pos_enc.bias
