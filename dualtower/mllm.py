"""Pieces that turn a vision tower into the visual front end of a multimodal LLM, as InternVL does it:
dynamic high-resolution tiling of the input image, pixel shuffle of the patch tokens, and the projector; and
the hidden states of chosen layers for a list of image files (`extract_features`, `dualtower features`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import nn

from .errors import UnknownName, UserError


def tile_grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """Every (columns, rows) with min_tiles <= columns * rows <= max_tiles, fewest tiles first."""
    grids = [(c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1)
             if min_tiles <= c * r <= max_tiles]
    return sorted(grids, key=lambda g: g[0] * g[1])  # stable: equal counts keep (columns, rows) order


def tile_grid(width: int, height: int, tile: int, min_tiles: int = 1, max_tiles: int = 12) -> tuple[int, int]:
    """The (columns, rows) whose aspect ratio is closest to the image's. On a tie, the grid with more tiles wins
    while the image is larger than half the tiles' area (InternVL's rule: no needless upscaling)."""
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in tile_grids(min_tiles, max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best


def dynamic_tiles(image: Image.Image, tile: int, min_tiles: int = 1, max_tiles: int = 12,
                  thumbnail: bool = True) -> list[Image.Image]:
    """Resize to the best grid of tile x tile squares (bicubic), cut it row by row; with more than one tile, add
    the whole image resized to one tile (the thumbnail)."""
    cols, rows = tile_grid(image.width, image.height, tile, min_tiles, max_tiles)
    canvas = image.resize((cols * tile, rows * tile), Image.Resampling.BICUBIC)
    tiles = [canvas.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile)) for r in range(rows)
             for c in range(cols)]
    if thumbnail and len(tiles) > 1:
        tiles.append(image.resize((tile, tile), Image.Resampling.BICUBIC))
    return tiles


def pixel_shuffle(x: torch.Tensor, scale: float = 0.5) -> torch.Tensor:
    """(B, H, W, C) -> (B, H * scale, W * scale, C / scale^2): each output token packs a 1/scale x 1/scale block
    of neighbours, in InternVL's (v2) channel order. The token count drops by 1/scale^2 (4x at 0.5)."""
    B, H, W, C = x.shape
    k = round(1 / scale)
    if H % k or W % k:
        raise UserError(f"a {H}x{W} token grid cannot be shuffled by {scale}: both sides must divide by {k}")
    x = x.reshape(B, H, W // k, C * k).transpose(1, 2)  # merge k neighbours along W, then swap the axes
    x = x.reshape(B, W // k, H // k, C * k * k).transpose(1, 2)  # merge k neighbours along H, swap back
    return x.contiguous()  # (B, H/k, W/k, C k^2)


class Projector(nn.Module):
    """InternVL's vision-to-language projector: LayerNorm, Linear, GELU, Linear."""

    def __init__(self, in_dim: int, out_dim: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim, eps=eps)
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


# Key tables for the projector: transformers' InternVLModel and the original InternVL checkpoints (mlp1).
PROJECTOR_KEYS = {
    "hf": {"norm": "multi_modal_projector.layer_norm", "fc1": "multi_modal_projector.linear_1",
           "fc2": "multi_modal_projector.linear_2"},
    "internvl": {"norm": "mlp1.0", "fc1": "mlp1.1", "fc2": "mlp1.3"},
}


def load_projector(state: dict[str, torch.Tensor], layout: str) -> Projector:
    """A Projector from a state dict in `layout` ("hf" or "internvl"), under any prefix (`model.` in a whole
    transformers InternVLModel); a missing key is an error naming it."""
    names = PROJECTOR_KEYS[layout]
    anchor = f"{names['fc1']}.weight"
    prefix = next((k[: -len(anchor)] for k in state if k == anchor or k.endswith("." + anchor)), "")
    missing = [f"{prefix}{names[p]}.{w}" for p in names for w in ("weight", "bias")
               if f"{prefix}{names[p]}.{w}" not in state]
    if missing:
        raise UnknownName(f"projector keys missing from the {layout} state dict: {missing}")
    fc1 = state[prefix + anchor]
    projector = Projector(fc1.shape[1], fc1.shape[0])
    projector.load_state_dict({f"{p}.{w}": state[f"{prefix}{names[p]}.{w}"] for p in names for w in ("weight", "bias")})
    return projector


def image_tokens(model, pixels: torch.Tensor, projector: Projector | None = None, layer: int = -1,
                 scale: float = 0.5) -> torch.Tensor:
    """InternVL's visual tokens for a batch of tiles (B, 3, S, S): the hidden states of `layer`, class token
    dropped, pixel-shuffled by `scale`, then projected (when a projector is given): (B, N * scale^2, out)."""
    x = model.visual.features(pixels, layers=(layer,), keep_cls=False, interpolate_pos=True)[0]  # (B, N, D)
    B, N, D = x.shape
    gh, gw = pixels.shape[-2] // model.cfg.vision.patch_size, pixels.shape[-1] // model.cfg.vision.patch_size
    x = pixel_shuffle(x.reshape(B, gh, gw, D), scale).reshape(B, -1, round(D / scale ** 2))
    return projector(x) if projector is not None else x


@dataclass
class VisionFeatures:
    """Hidden states of chosen layers for a list of images (each cut into tiles, or one tile)."""

    layers: tuple[int, ...]
    tensors: dict[str, torch.Tensor]  # "layer<N>": (tiles, tokens, width), the tiles of every image in order
    images: list[str]  # the images read, in order
    tiles_per_image: list[int]
    skipped: list[str] = field(default_factory=list)  # images that could not be decoded
    keep_cls: bool = True
    final_norm: bool = False

    def save(self, path: "str | os.PathLike") -> None:
        """One safetensors file: tensors layer<N>; metadata images, tiles_per_image, skipped, layers (JSON)."""
        from safetensors.torch import save_file

        from .io import atomic_file

        check_features_path(path)
        meta = {"images": json.dumps(self.images), "tiles_per_image": json.dumps(self.tiles_per_image),
                "skipped": json.dumps(self.skipped), "layers": json.dumps(self.layers),
                "class_token": str(self.keep_cls).lower(), "final_norm": str(self.final_norm).lower()}
        with atomic_file(path) as tmp:
            save_file(self.tensors, tmp, metadata=meta)


def check_features_path(path: "str | os.PathLike") -> None:
    if not str(path).endswith(".safetensors"):
        raise UserError(f"{path}: features are written as safetensors; name the output FILE.safetensors")


@torch.inference_mode()
def extract_features(model, paths: list[str], layers: tuple[int, ...] = (-2,), keep_cls: bool = True,
                     final_norm: bool = False, tiles: tuple[int, int] | None = None, batch_size: int = 32,
                     on_skip=None) -> VisionFeatures:
    """Hidden states of `layers` (HF numbering) for each image file, in batches of `batch_size` images; with
    `tiles=(min, max)` each image is cut into InternVL's dynamic tiles (plus a thumbnail). An image that cannot
    be decoded is skipped, listed, and reported to `on_skip(message)`."""
    from . import get_transform
    from .images import ImageDecodeError, open_image

    if model.cfg.vision is not None and model.cfg.vision.naflex:
        raise UserError(f"{model.cfg.name} is a NaFlex tower: its hidden states are padded sequences of a length "
                         "per image; call model.visual.features(dualtower.naflex.Patches...) for them")
    device = next(model.parameters()).device
    transform = get_transform(model)
    result = VisionFeatures(tuple(layers), {}, [], [], keep_cls=keep_cls, final_norm=final_norm)
    outputs: list[list[torch.Tensor]] = [[] for _ in layers]
    for start in range(0, len(paths), batch_size):
        pixels = []
        for path in paths[start: start + batch_size]:
            try:
                image = open_image(path)
            except ImageDecodeError as e:
                result.skipped.append(path)
                if on_skip is not None:
                    on_skip(f"skipped: {e}")
                continue
            cut = dynamic_tiles(image, model.cfg.vision.image_size, *tiles) if tiles else [image]
            pixels += [transform(t) for t in cut]
            result.images.append(path)
            result.tiles_per_image.append(len(cut))
        if pixels:
            feats = model.visual.features(torch.stack(pixels).to(device), layers=tuple(layers), keep_cls=keep_cls,
                                          final_norm=final_norm)
            for out, f in zip(outputs, feats):
                out.append(f.cpu())
    if not result.images:
        raise UserError("no image could be read")
    result.tensors = {f"layer{layer}": torch.cat(out).contiguous() for layer, out in zip(layers, outputs)}
    return result
