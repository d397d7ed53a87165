"""Normalise decoded images to one corpus shape: (H, W, C) uint8 with C in {1, 3}."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

FITS = ("stretch", "crop", "pad")


@dataclass(frozen=True)
class ImageShape:
    """Target shape of every image in a corpus."""
    height: int
    width: int
    channels: int

    def __post_init__(self):
        if self.height < 1 or self.width < 1 or self.height > 4096 or self.width > 4096:
            raise ValueError(f"image size {self.height}x{self.width} is out of range: use 1..4096 pixels a side")
        if self.channels not in (1, 3):
            raise ValueError(f"channels={self.channels} is not supported: use 1 (gray) or 3 (RGB)")

    @property
    def hwc(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)


def image_id(pixels: np.ndarray) -> str:
    """sha256 of the normalised pixels: the identity used to find duplicates."""
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def _to_8bit(img: Image.Image) -> Image.Image:
    """Integer and float modes (I;16, I, F) to 8-bit gray, keeping relative intensities."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        out = arr.astype(np.float64) / 257.0
    elif img.mode == "I":
        hi = 255 if arr.max() <= 255 else 65535 if arr.max() <= 65535 else float(arr.max())
        out = np.clip(arr, 0, None).astype(np.float64) * (255.0 / hi)
    else:  # F
        lo, hi = float(arr.min()), float(arr.max())
        out = np.zeros_like(arr, dtype=np.float64) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode="L")


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow mode to L (channels=1) or RGB (channels=3).

    Transparency is composited over white; CMYK, YCbCr, LAB, HSV go through Pillow's RGB
    conversion; 16-bit and 32-bit gray are rescaled to 8 bits.
    """
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        img = _to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img).convert("RGB")
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


def resize(img: Image.Image, height: int, width: int, fit: str = "stretch") -> Image.Image:
    """Resize with antialiasing (Lanczos). ``fit``: stretch, crop (centre) or pad (letterbox)."""
    if fit not in FITS:
        raise ValueError(f"fit={fit!r} is not one of {FITS}")
    if img.size == (width, height):
        return img
    if fit == "stretch":
        return img.resize((width, height), Image.Resampling.LANCZOS)
    sx, sy = width / img.width, height / img.height
    scale = max(sx, sy) if fit == "crop" else min(sx, sy)
    nw, nh = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    scaled = img.resize((nw, nh), Image.Resampling.LANCZOS)
    if fit == "crop":
        left, top = (nw - width) // 2, (nh - height) // 2
        return scaled.crop((left, top, left + width, top + height))
    canvas = Image.new(scaled.mode, (width, height), 0)
    canvas.paste(scaled, ((width - nw) // 2, (height - nh) // 2))
    return canvas


def normalise(img: Image.Image, shape: ImageShape, fit: str = "stretch") -> np.ndarray:
    """Decoded Pillow image -> (H, W, C) uint8 array of the corpus shape."""
    img = resize(to_mode(img, shape.channels), shape.height, shape.width, fit)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def normalise_array(arr: np.ndarray, shape: ImageShape, fit: str = "stretch") -> np.ndarray:
    """An (H, W) or (H, W, C) uint8 array -> the corpus shape (fast path when it already fits)."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape == shape.hwc:
        return arr
    c = arr.shape[2]
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(c)
    if mode is None:
        raise ValueError(f"array image with {c} channels: expected 1, 3 or 4")
    return normalise(Image.fromarray(arr[..., 0] if c == 1 else arr, mode=mode), shape, fit)


def array_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Numeric image arrays to uint8: floats in [0, 1] are scaled by 255, other values clipped."""
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        finite = arr[np.isfinite(arr)]
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        return np.clip(np.rint(np.nan_to_num(arr) * scale), 0, 255).astype(np.uint8)
    if arr.dtype == np.uint16:
        return np.rint(arr / 257.0).astype(np.uint8)
    return np.clip(arr, 0, 255).astype(np.uint8)
