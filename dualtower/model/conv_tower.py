"""What every convolutional vision tower does the same way behind the ViT's interface (pixels -> pooled features
-> projection; `features` per stage): a subclass builds `stem` and `stages` (each stage a module with
`grad_checkpointing` and `blocks`) and says how the last map becomes the embedding (`pool_and_project`)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from . import noise
from .towers import state_indices


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def run_blocks(stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A stage's blocks in order, each recomputed in backward when the stage checkpoints in training."""
    if stage.grad_checkpointing and stage.training:
        for block in stage.blocks:
            x = noise.checkpoint(block, x)  # the recompute draws the forward's noise
        return x
    return stage.blocks(x)


class ConvTower(nn.Module):
    stem: nn.Module
    stages: nn.Sequential

    def pool_and_project(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map (B, C, H, W) -> the embedding (B, E)."""
        raise NotImplementedError

    def blocks(self) -> list[nn.Module]:
        """The units FSDP shards and checkpointing recomputes: the stages."""
        return list(self.stages)

    def set_grad_checkpointing(self, enable: bool) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def set_patch_dropout(self, prob: float) -> None:
        if prob > 0:
            raise UserError("patch dropout needs patch tokens; this vision tower is convolutional (it has none)")

    def _check(self, pixels: torch.Tensor, interpolate_pos: bool) -> None:
        if not isinstance(pixels, torch.Tensor):
            raise UserError("patch sequences (NaFlex input) need a NaFlex ViT; a convolutional tower takes pixels")
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise UserError(f"pixels must be (B, 3, H, W), got {tuple(pixels.shape)}")
        size = self.cfg.image_size
        if not interpolate_pos and pixels.shape[-2:] != (size, size):
            raise UserError(f"pixels are {tuple(pixels.shape[-2:])}, this model takes {size}x{size} (a convolutional "
                             "tower takes other sizes too, with interpolate_pos=True: it has no positions to resize)")

    def forward(self, pixels: torch.Tensor, interpolate_pos: bool = False) -> torch.Tensor:
        """pixels (B, 3, H, W) -> (B, E)."""
        self._check(pixels, interpolate_pos)
        x = self.stages(self.stem(pixels.to(self.dtype)))  # a bf16 model takes fp32 pixels
        return self.pool_and_project(x)

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
        wanted = state_indices(layers, n, "stages", ": a convolutional tower's features are chosen by stage, not by "
                               "block")
        self._check(pixels, interpolate_pos)
        x = self.stem(pixels.to(self.dtype))
        states = [x]
        for stage in self.stages[: max(wanted)]:
            x = stage(x)
            states.append(x)
        return [states[w].flatten(2).transpose(1, 2) for w in wanted]
