"""Small PNG charts drawn with Pillow (no plotting library needed): a line chart and a heat map."""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .io import atomic_file

@lru_cache(maxsize=4)
def default_font(size: int = 13):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        return ImageFont.load_default()


def save_png(image: Image.Image, path: "str | Path") -> None:
    with atomic_file(path) as tmp:
        image.save(tmp, format="PNG")


def line_chart(xs: list[float], ys: list[float], path: "str | Path", title: str, xlabel: str, ylabel: str,
               size: tuple[int, int] = (640, 400)) -> None:
    w, h = size
    left, right, top, bottom = 64, 16, 32, 44
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = default_font()
    draw.text((left, 8), title, fill="black", font=font)
    points = [(x, y) for x, y in zip(xs, ys) if math.isfinite(y)]
    if points:
        x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
        y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
        x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

        def to_px(x, y):
            return (left + (x - x0) / (x1 - x0) * (w - left - right), h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom))

        for i in range(5):  # horizontal grid lines with their values
            y = y0 + (y1 - y0) * i / 4
            _, py = to_px(x0, y)
            draw.line([(left, py), (w - right, py)], fill=(225, 225, 225))
            draw.text((4, py - 7), f"{y:.3g}", fill="black", font=font)
        draw.line([to_px(*p) for p in points], fill=(31, 119, 180), width=2)
        draw.text((left, h - bottom + 6), f"{x0:g}", fill="black", font=font)
        draw.text((w - right - 40, h - bottom + 6), f"{x1:g}", fill="black", font=font)
    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    draw.text((w // 2 - 20, h - 20), xlabel, fill="black", font=font)
    draw.text((4, top - 18), ylabel, fill="black", font=font)
    save_png(image, path)


def heat_map(matrix: list[list[float]], path: "str | Path", title: str, row_labels: list[str],
             col_labels: list[str], cell: int = 36, annotate: bool = True) -> None:
    rows, cols = len(matrix), len(matrix[0]) if matrix else 0
    label_w, top = 110, 110
    image = Image.new("RGB", (label_w + cols * cell + 10, top + rows * cell + 10), "white")
    draw = ImageDraw.Draw(image)
    font = default_font()
    draw.text((8, 8), title, fill="black", font=font)
    flat = [v for r in matrix for v in r]
    lo, hi = (min(flat), max(flat)) if flat else (0.0, 1.0)
    span = hi - lo or 1.0
    for j, name in enumerate(col_labels):  # column labels, rotated
        label = Image.new("RGBA", (top - 30, 16), (255, 255, 255, 0))
        ImageDraw.Draw(label).text((0, 0), name[:14], fill="black", font=font)
        rotated = label.rotate(90, expand=True)
        image.paste(rotated, (label_w + j * cell + cell // 2 - 8, 28), rotated)
    for i in range(rows):
        draw.text((4, top + i * cell + cell // 2 - 7), row_labels[i][:15], fill="black", font=font)
        for j in range(cols):
            t = (matrix[i][j] - lo) / span
            colour = (int(255 - 220 * t), int(255 - 150 * t), int(255 - 40 * t))
            x, y = label_w + j * cell, top + i * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour, outline=(240, 240, 240))
            if annotate:
                v = matrix[i][j]
                text = f"{v:.0f}" if float(v).is_integer() else f"{v:.2f}"
                draw.text((x + 4, y + cell // 2 - 7), text, fill="white" if t > 0.6 else "black", font=font)
    save_png(image, path)
