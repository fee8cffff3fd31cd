"""Safe image decoding and the eval preprocessing, on Pillow and torch alone (no torchvision).

Decoding keeps Pillow's decompression-bomb limit and applies the EXIF orientation; the image keeps its own mode
(alpha, palette, 16-bit, CMYK). The transforms turn it into RGB where the model's reference does
(`PreprocessConfig.rgb`): open_clip resizes and crops in the file's mode and converts last, transformers'
processors composite over white first, timm and InternVL convert first. A file that is empty, truncated or not an
image raises `ImageDecodeError` naming the file.
"""

from __future__ import annotations

import io
import math
import os
import random
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from .config import PreprocessConfig
from .errors import UserError

if TYPE_CHECKING:
    import torch

    from .naflex import Patches

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


# What the library means to read. Pillow would otherwise try every plugin it has, EPS among them, whose loader
# runs Ghostscript, an external program: a file is only ever opened as one of these, whatever its name says.
FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "DIB", "TIFF", "PPM", "TGA", "AVIF")


@lru_cache(maxsize=1)
def _formats() -> tuple[str, ...]:
    Image.init()
    return tuple(f for f in FORMATS if f in Image.OPEN)  # AVIF only where this Pillow was built with it


class ImageDecodeError(UserError):
    """A file could not be decoded as an image; the message names the file and the reason."""


class TooManyPixels(ImageDecodeError):
    """An image whose header declares more pixels than the caller allows (checked before decoding)."""


def open_image(source: "str | os.PathLike | bytes", name: str | None = None,
               max_pixels: int | None = None) -> Image.Image:
    """Decode a path or raw bytes into a PIL image in the file's own mode, upright per its EXIF orientation.
    (`to_rgb` makes it RGB; the transforms do that at the point their model's reference does.) `max_pixels`
    refuses a larger image from its header, before any decoding (Pillow's own bomb limit holds regardless)."""
    label = name or (f"<{len(source)} bytes>" if isinstance(source, bytes) else os.fspath(source))
    try:
        if isinstance(source, bytes):
            if not source:
                raise ImageDecodeError(f"{label}: empty data, not an image")
            image = Image.open(io.BytesIO(source), formats=_formats())
        else:
            if os.path.isdir(source):
                raise ImageDecodeError(f"{label}: is a directory, not an image")
            if os.path.getsize(source) == 0:
                raise ImageDecodeError(f"{label}: empty file, not an image")
            image = Image.open(source, formats=_formats())
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise TooManyPixels(f"{label}: {image.width}x{image.height} is {image.width * image.height:,} pixels, "
                                f"more than the {max_pixels:,} allowed")
        image.load()  # decode now, so a truncated file fails here and not later
        ImageOps.exif_transpose(image, in_place=True)  # (a copy otherwise: twice the decoded size at peak)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own limit, checked inside Image.open: beyond any caller's
        import re

        found = re.search(r"\((\d+) pixels\)", str(e))
        pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        limit = max_pixels if max_pixels is not None else 2 * Image.MAX_IMAGE_PIXELS
        raise TooManyPixels(f"{label}: {pixels} from its header, more than the {limit:,} allowed") from e
    except FileNotFoundError as e:
        raise ImageDecodeError(f"{label}: no such file") from e
    except Image.UnidentifiedImageError as e:
        raise ImageDecodeError(f"{label}: not an image in a format read here ({', '.join(_formats())})") from e
    except (OSError, SyntaxError, ValueError) as e:  # Pillow reports truncated and corrupt data this way
        raise ImageDecodeError(f"{label}: corrupt or truncated image ({e})") from e
    return image


def convert_rgb(image: Image.Image) -> Image.Image:
    """Pillow's own convert("RGB"): alpha dropped, 16-bit clipped (open_clip, timm, InternVL)."""
    if image.mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except ValueError:  # a mode Pillow cannot convert directly (for example "La")
        return image.convert("RGBA").convert("RGB")


def white_rgb(image: Image.Image) -> Image.Image:
    """transformers' convert_rgb: every other mode through RGBA, composited over white."""
    if image.mode == "RGB":
        return image
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: transparency over white, high bit depths scaled to 0..255 (not clipped)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit samples (Pillow widens 16-bit PNGs to "I"): 65535 maps to 255.
        return _gray_array_to_rgb(np.asarray(image, dtype=np.float64) / 257.0)
    if mode == "F":
        # Float images are taken to span 0..1.
        return _gray_array_to_rgb(np.asarray(image, dtype=np.float64) * 255.0)
    if mode == "P" and "transparency" in image.info or mode in ("PA", "La"):
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _gray_array_to_rgb(values: np.ndarray) -> Image.Image:
    gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


class ImageTransform:
    """PIL image -> FloatTensor (3, S, S): resize the shortest side to S and center crop ("shortest"), or resize
    to S x S ignoring the aspect ratio ("squash", SigLIP and InternVL); scale to 0..1, normalise. With
    crop_pct < 1 (timm's eval transform) the resize goes to floor(S / crop_pct) and the center crop takes S."""

    MAX_ASPECT = 16  # a longer side beyond 16x the shorter is cropped to 16:1 before the resize (memory bound)

    def __init__(self, cfg: PreprocessConfig):
        self.cfg = cfg
        self.mean = np.array(cfg.mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.array(cfg.std, dtype=np.float32).reshape(3, 1, 1)

    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        return self.crop(self.resize(image)[0])

    def resize(self, image: Image.Image) -> tuple[Image.Image, bool]:
        """(the image resized as the config says, before the center crop; whether it is the whole picture: a
        strip beyond MAX_ASPECT is cut first, and "squash" changes the aspect ratio)."""
        scale = self.cfg.image_size if self.cfg.crop_pct == 1 else math.floor(self.cfg.image_size / self.cfg.crop_pct)
        width, height = image.size
        whole = self.cfg.resize_mode == "shortest"
        if self.cfg.resize_mode == "shortest" and max(width, height) > self.MAX_ASPECT * min(width, height):
            # A strip (1 x 10,000 pixels) would resize to millions of pixels a side, only to be cropped to the
            # middle square. Crop it first to MAX_ASPECT:1 around the middle: memory stays bounded by the output
            # size, and the pixels the final crop keeps come from the same part of the image.
            short = min(width, height)
            keep = self.MAX_ASPECT * short
            if width > height:
                image = image.crop(((width - keep) // 2, 0, (width - keep) // 2 + keep, height))
            else:
                image = image.crop((0, (height - keep) // 2, width, (height - keep) // 2 + keep))
            width, height, whole = *image.size, False
        if self.cfg.resize_mode == "squash":
            new = (scale, scale)
        elif width <= height:
            new = (scale, int(scale * height / width))
        else:
            new = (int(scale * width / height), scale)
        return (image if new == (width, height) else image.resize(new, _RESAMPLE[self.cfg.interpolation])), whole

    def crop(self, image: Image.Image) -> Image.Image:
        """The center crop of the resized image to S x S (`resize`)."""
        size = self.cfg.image_size
        if image.size == (size, size):
            return image
        if self.cfg.center_crop == "floor":  # HF's rule
            left, top = (image.width - size) // 2, (image.height - size) // 2
        else:  # torchvision's (open_clip, timm)
            left, top = int(round((image.width - size) / 2.0)), int(round((image.height - size) / 2.0))
        return image.crop((left, top, left + size, top + size))

    def to_array(self, image: Image.Image) -> np.ndarray:
        """(3, S, S) float32, scaled and normalised; the same float32 operations as torchvision's ToTensor and
        Normalize, so the values are identical."""
        pixels = np.asarray(image, dtype=np.uint8)
        out = np.empty((3, *pixels.shape[:2]), np.float32)
        out[...] = pixels.transpose(2, 0, 1)  # written in (3, S, S) order once: each op below reads it in order
        out /= np.float32(255.0)  # in place, each element the same float32 operations (a quarter of the time)
        out -= self.mean
        out /= self.std
        return out

    def to_tensor(self, image: Image.Image) -> "torch.Tensor":
        import torch

        return torch.from_numpy(np.ascontiguousarray(self.to_array(image)))

    def array(self, image: Image.Image) -> np.ndarray:
        """The transform without torch: (3, S, S) float32 (what an ONNX Runtime session takes)."""
        return self.to_array(self.rgb_after(self.resize_and_crop(self.rgb_before(image))))

    def finish(self, image: Image.Image) -> "torch.Tensor":
        """The cropped S x S image -> this transform's sample."""
        return self.to_tensor(self.rgb_after(image))

    def sample_and_view(self, image: Image.Image) -> tuple:
        """(this transform's sample of `image`; the whole picture as resized on the way, or None where it is not
        the whole picture in RGB): a source for a thumbnail that costs a tenth of one from the original."""
        resized, whole = self.resize(self.rgb_before(image))
        return self.finish(self.crop(resized)), (resized if whole and resized.mode == "RGB" else None)

    def rgb_before(self, image: Image.Image) -> Image.Image:
        """The conversion to RGB a reference makes before resizing (none for open_clip's rule)."""
        return _BEFORE[self.cfg.rgb](image)

    def rgb_after(self, image: Image.Image) -> Image.Image:
        """open_clip's conversion after the crop; an image already RGB passes."""
        return convert_rgb(image)

    def __call__(self, image: Image.Image, seed: int | None = None) -> torch.Tensor:
        return self.finish(self.resize_and_crop(self.rgb_before(image)))

    def collate(self, samples: list) -> "torch.Tensor":
        """A batch of this transform's outputs: (B, 3, S, S). Every transform batches its own kind of sample (a
        NaFlex one into Patches), so callers never ask which kind they hold."""
        import torch

        size = self.cfg.image_size
        return torch.stack(samples) if samples else torch.zeros(0, 3, size, size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cfg})"


class ArrayTransform(ImageTransform):
    """The eval transform without torch: PIL image -> (3, S, S) float32 numpy (what ONNX Runtime takes)."""

    def finish(self, image: Image.Image) -> np.ndarray:
        return self.to_array(self.rgb_after(image))

    def collate(self, samples: list) -> np.ndarray:
        size = self.cfg.image_size
        return np.stack(samples) if samples else np.zeros((0, 3, size, size), np.float32)


class NaFlexTransform(ImageTransform):
    """PIL image -> (patches (n, p * p * 3) float32, grid (rows, columns)) for a NaFlex tower (SigLIP 2): the
    image keeps its aspect ratio, resized so its grid holds at most `max_patches` patches (the budget of the
    config unless given), then scaled, normalised and cut into patches. `collate` makes a batch (Patches).
    Equal to transformers' Siglip2 image processor (PIL backend) on 8-bit RGB images; tested."""

    def __init__(self, cfg: PreprocessConfig, max_patches: int | None = None, upscale: bool = True):
        super().__init__(cfg)
        self.max_scale = 100.0 if upscale else 1.0  # the reference's bound on upscaling, or none at all
        if cfg.resize_mode != "naflex":
            raise UserError(f"NaFlexTransform needs preprocess resize_mode 'naflex', not {cfg.resize_mode!r}")
        self.patch = cfg.patch_size
        self.max_patches = cfg.max_patches if max_patches is None else max_patches
        if self.max_patches < 1:
            raise UserError(f"max_patches must be at least 1, got {self.max_patches}")

    def size_for(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) in pixels an image of this size is resized to: its patch grid's."""
        from .naflex import grid_for

        rows, cols = grid_for(height, width, self.patch, self.max_patches, self.max_scale)
        return cols * self.patch, rows * self.patch

    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        size = self.size_for(*image.size)
        return image if size == image.size else image.resize(size, _RESAMPLE[self.cfg.interpolation])

    def patches(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int]]:
        """An image already at its grid's size -> (patches, (rows, columns)), scaled and normalised."""
        from .naflex import patchify

        pixels = self.to_array(self.rgb_after(image))  # (3, H, W)
        return patchify(pixels, self.patch), (pixels.shape[1] // self.patch, pixels.shape[2] // self.patch)

    def array(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int]]:
        return self.patches(self.resize_and_crop(self.rgb_before(image)))

    def __call__(self, image: Image.Image, seed: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
        return self.array(image)

    def sample_and_view(self, image: Image.Image) -> tuple:
        return self(image), None  # resized to a patch grid, which moves the aspect ratio

    def collate(self, samples: list) -> "Patches":
        """(patches, grid) pairs padded to the longest image."""
        from .naflex import Patches

        return Patches.collate(samples) if samples else Patches.empty(self.patch)


class NaFlexArrayTransform(NaFlexTransform):
    """NaFlexTransform without torch: `collate` gives numpy (values, mask, shapes), what an exported NaFlex graph
    takes (`naflex.collate_arrays`)."""

    def collate(self, samples: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from .naflex import collate_arrays

        return collate_arrays(samples, self.patch)


class NaFlexTrainTransform(NaFlexTransform):
    """A random crop of `scale` of the area at the image's own aspect ratio, resized to the grid of the whole
    image: each record's patch count is known before it is decoded (token-budget batches plan with it), and the
    augmentation is drawn from the sample's seed like TrainTransform's."""

    def __init__(self, cfg: PreprocessConfig, max_patches: int | None = None, scale: tuple[float, float] = (0.9, 1.0),
                 upscale: bool = True):
        super().__init__(cfg, max_patches, upscale)
        self.scale = scale

    def __call__(self, image: Image.Image, seed: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
        if seed is None:
            raise UserError("NaFlexTrainTransform needs a seed per sample")
        rng = random.Random(seed)
        image = self.rgb_before(image)
        width, height = image.size
        side = math.sqrt(rng.uniform(*self.scale))  # both sides by the same factor: the aspect ratio is kept
        w, h = max(1, round(width * side)), max(1, round(height * side))
        left, top = rng.randint(0, width - w), rng.randint(0, height - h)
        image = image.resize(self.size_for(width, height), _RESAMPLE[self.cfg.interpolation],
                             box=(left, top, left + w, top + h))
        return self.patches(image)


def eval_transform(cfg: PreprocessConfig, max_patches: int | None = None, upscale: bool = True) -> ImageTransform:
    """The eval preprocessing of a model: (3, S, S) pixels, or (patches, grid) for a NaFlex model."""
    if cfg.resize_mode == "naflex":
        return NaFlexTransform(cfg, max_patches, upscale)
    if max_patches is not None:
        raise UserError("max_patches applies to NaFlex models (SigLIP 2) only")
    return ImageTransform(cfg)


class TrainTransform(ImageTransform):
    """Random resized crop (area `scale`, log-uniform aspect `ratio`, as in Inception and CLIP training), then
    scale and normalise. The crop is drawn from `seed`, so a sample's augmentation is fixed by (run seed, step,
    record): the same on resume and whichever loader worker decodes it."""

    def __init__(self, cfg: PreprocessConfig, scale: tuple[float, float] = (0.9, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        super().__init__(cfg)
        self.scale, self.ratio = scale, ratio

    def crop_box(self, width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
        area = width * height
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                left, top = rng.randint(0, width - w), rng.randint(0, height - h)
                return left, top, left + w, top + h
        side = min(width, height)  # fall back to the central square
        left, top = (width - side) // 2, (height - side) // 2
        return left, top, left + side, top + side

    def __call__(self, image: Image.Image, seed: int | None = None) -> torch.Tensor:
        if seed is None:
            raise UserError("TrainTransform needs a seed per sample")
        image = self.rgb_before(image)
        box = self.crop_box(*image.size, random.Random(seed))
        size = self.cfg.image_size
        return self.to_tensor(self.rgb_after(image.resize((size, size), _RESAMPLE[self.cfg.interpolation], box=box)))

    def sample_and_view(self, image: Image.Image) -> tuple:
        raise TypeError("TrainTransform draws a crop per seed: call it with one")


_BEFORE = {"after_resize": lambda image: image, "white_first": white_rgb, "convert_first": convert_rgb,
           "scaled_first": to_rgb}
