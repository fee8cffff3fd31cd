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


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values (steps of 1, 2 or 5 times a power of ten) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        if t >= lo - step * 1e-9:
            ticks.append(round(t, 12) + 0.0)  # + 0.0: never -0
        t += step
    return ticks


def cell_text(value: float) -> str:
    """A heat-map cell's number: integers plain, others with two decimals, and never "-0"."""
    if float(value).is_integer():
        return f"{int(value)}"
    return f"{round(value, 2) + 0.0:.2f}"


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

        for y in nice_ticks(y0, y1):  # horizontal grid lines at round values
            _, py = to_px(x0, y)
            draw.line([(left, py), (w - right, py)], fill=(225, 225, 225))
            draw.text((4, py - 7), f"{y:g}", fill="black", font=font)
        for x in nice_ticks(x0, x1):  # round ticks along the x axis
            px, _ = to_px(x, y0)
            draw.line([(px, h - bottom), (px, h - bottom + 4)], fill="black")
            draw.text((px - 8, h - bottom + 6), f"{x:g}", fill="black", font=font)
        draw.line([to_px(*p) for p in points], fill=(31, 119, 180), width=2)
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
    signed = lo < 0  # signed values: a diverging scale centred on 0 and a colour bar
    if signed:
        lo, hi = -max(abs(lo), abs(hi)), max(abs(lo), abs(hi))
        image = _with_colour_bar(image, draw, lo, hi, top, rows * cell, font)
        draw = ImageDraw.Draw(image)
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
            colour = _diverging(t) if signed else _sequential(t)
            x, y = label_w + j * cell, top + i * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour, outline=(240, 240, 240))
            if annotate:
                dark = abs(t - 0.5) > 0.3 if signed else t > 0.6
                draw.text((x + 4, y + cell // 2 - 7), cell_text(matrix[i][j]), fill="white" if dark else "black",
                          font=font)
    save_png(image, path)


def _sequential(t: float) -> tuple[int, int, int]:
    return int(255 - 220 * t), int(255 - 150 * t), int(255 - 40 * t)  # white to blue


def _diverging(t: float) -> tuple[int, int, int]:
    """0 blue, 0.5 white, 1 red."""
    if t < 0.5:
        u = 1 - 2 * t
        return int(255 - 200 * u), int(255 - 140 * u), 255
    u = 2 * t - 1
    return 255, int(255 - 170 * u), int(255 - 190 * u)


def _with_colour_bar(image: Image.Image, draw, lo: float, hi: float, top: int, height: int, font) -> Image.Image:
    """The image widened by a vertical colour bar from lo (bottom) to hi (top), with round tick labels."""
    bar_x, bar_w = image.width + 10, 16
    wider = Image.new("RGB", (image.width + 80, image.height), "white")
    wider.paste(image, (0, 0))
    d = ImageDraw.Draw(wider)
    for k in range(height):
        d.line([(bar_x, top + k), (bar_x + bar_w, top + k)], fill=_diverging(1 - k / max(height - 1, 1)))
    d.rectangle([bar_x, top, bar_x + bar_w, top + height - 1], outline="black")
    for v in nice_ticks(lo, hi):
        y = top + (hi - v) / (hi - lo) * (height - 1)
        d.line([(bar_x + bar_w, y), (bar_x + bar_w + 4, y)], fill="black")
        d.text((bar_x + bar_w + 6, y - 7), f"{v:g}", fill="black", font=font)
    return wider
