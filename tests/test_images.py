"""Preprocessing within 1/255 of open_clip's eval transform on real photos; every bad input gives a clear error."""

import io

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import dualtower
from dualtower.images import ImageDecodeError, open_image, to_rgb


@pytest.mark.parametrize("arch", ["ViT-B-32", "ViT-L-14-336", "ViT-B-16-plus-240"])
def test_eval_transform_matches_open_clip_on_real_photos(photos, arch):
    cfg = dualtower.get_config(arch).preprocess
    ref = open_clip.image_transform(cfg.image_size, is_train=False, mean=cfg.mean, std=cfg.std)
    ours = dualtower.get_transform(arch)
    std = torch.tensor(cfg.std).view(3, 1, 1)
    for name, image in photos.items():
        a, b = ours(image), ref(image)
        assert a.shape == b.shape == (3, cfg.image_size, cfg.image_size), name
        worst = float(((a - b) * std).abs().max())  # back in 0..1 pixel units
        assert worst <= 1 / 255 + 1e-6, f"{name}: {worst * 255:.2f}/255"


def _bytes(image, fmt, **kw):
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def test_truncated_empty_and_non_image_files_name_the_file(tmp_path, photos):
    jpeg = _bytes(photos["coffee"], "JPEG")
    cases = {"truncated.jpg": jpeg[: len(jpeg) // 2], "empty.jpg": b"", "notes.jpg": b"just some text\n" * 10}
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ImageDecodeError, match=name):
            open_image(path)
    with pytest.raises(ImageDecodeError, match="missing.png"):
        open_image(tmp_path / "missing.png")


def test_decompression_bomb_limit_is_kept(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (400, 400)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100 // 2)  # 160,000 px is over twice the limit
    with pytest.raises(ImageDecodeError, match="big.png"):
        open_image(path)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert open_image(path).size == (20, 40)


def test_transparency_is_composited_over_white():
    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(to_rgb(clear)).min() == 255
    half = Image.new("LA", (4, 4), (0, 128))
    assert abs(int(np.asarray(to_rgb(half))[0, 0, 0]) - 127) <= 1
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    assert np.asarray(to_rgb(open_image(_bytes(palette, "PNG")))).min() == 255


def test_sixteen_bit_is_scaled_not_clipped():
    values = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    image = Image.open(io.BytesIO(_bytes(Image.fromarray(values), "PNG")))
    rgb = np.asarray(to_rgb(open_image(_bytes(image, "PNG"))))
    assert rgb[0, :, 0].tolist() == [0, 128, 255]


def test_cmyk_and_grayscale_keep_their_mode_until_the_transform(photos):
    cmyk = open_image(_bytes(photos["coffee"].convert("CMYK"), "JPEG"))
    gray = open_image(_bytes(photos["camera"], "PNG"))
    assert (cmyk.mode, gray.mode) == ("CMYK", "L")
    assert to_rgb(cmyk).mode == to_rgb(gray).mode == "RGB"
    transform = dualtower.get_transform("tiny")
    assert transform(cmyk).shape == transform(gray).shape == (3, 32, 32)


def test_transform_output_is_normalised_tensor(photos):
    x = dualtower.get_transform("tiny")(photos["astronaut"])
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
