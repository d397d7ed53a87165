"""Tile uint8 images into one grid image and write it as PNG (to a local path, or to a store path on an
object store: any path object with ``open``, such as a ``upath.UPath``)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image


def make_grid(images: np.ndarray, ncols: int | None = None, pad: int = 2,
              pad_value: int = 255) -> np.ndarray:
    """Tile images into a grid.

    Parameters
    ----------
    images : ndarray of shape (n, H, W, C) or (n, H, W), uint8
    ncols : columns in the grid; defaults to ceil(sqrt(n)).

    Returns
    -------
    ndarray of shape (rows*(H+pad)+pad, ncols*(W+pad)+pad, C), uint8
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    n, h, w, c = images.shape
    if n == 0:
        return np.full((h + 2 * pad, w + 2 * pad, c), pad_value, np.uint8)
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), pad_value, np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y:y + h, x:x + w] = img
    return grid


def save_png(array: np.ndarray, path: str | Path, scale: int = 1) -> Path:
    """Save an (H, W, C) or (H, W) uint8 array as PNG, optionally upscaled (nearest)."""
    path = _as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(_image(array, scale), path)
    return path


def _as_path(path):
    """A local ``Path``; a URL string (``s3://...``) becomes a ``UPath``; other path objects stay."""
    if isinstance(path, str) and "://" in path:
        from upath import UPath
        return UPath(path)
    return Path(path) if isinstance(path, (str, os.PathLike)) else path


def _save(img: Image.Image, path) -> None:
    if isinstance(path, Path):
        img.save(path)
    else:  # a store path on an object store: one PUT of the whole file
        with path.open("wb") as fh:
            img.save(fh, format="PNG")


def _image(array: np.ndarray, scale: int = 1) -> Image.Image:
    """An (H, W, C) or (H, W) uint8 array as a Pillow image, upscaled (nearest) by ``scale``."""
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    img = Image.fromarray(arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return img


def save_labelled_rows(grid: np.ndarray, labels: list[str], path: str | Path, scale: int = 1,
                       pad: int = 2) -> Path:
    """Save a grid of ``len(labels)`` equal rows (from :func:`make_grid`) as PNG with each
    row's label written in a white strip on its left (Pillow's default font)."""
    from PIL import ImageDraw, ImageFont
    path = _as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = _image(grid, scale)
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(img)  # only to measure
    width = max((int(draw.textlength(t, font=font)) for t in labels), default=0) + 8
    out = Image.new(img.mode, (img.width + width, img.height), 255 if img.mode == "L" else (255,) * len(img.mode))
    out.paste(img, (width, 0))
    draw = ImageDraw.Draw(out)
    row_h = (img.height - pad * scale) / max(len(labels), 1)
    ink = 0 if img.mode == "L" else (0,) * len(img.mode)
    for i, text in enumerate(labels):
        draw.text((4, pad * scale + i * row_h + row_h / 2), text, fill=ink, font=font, anchor="lm")
    _save(out, path)
    return path
