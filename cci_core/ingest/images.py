"""Open user image files safely and normalise them to one corpus shape: (H, W, C) uint8, C in {1, 3}.

:func:`open_image` is the one way user-supplied image files are decoded (ingest, palette,
segment): a size cap on the bytes read and a pixel limit checked before decoding.
:func:`to_uint8` maps numeric arrays to bytes by a declared value range.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cci_core.common.shapes import ImageShape
from cci_core.ingest.limits import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_IMAGE_PIXELS

FITS = ("stretch", "crop", "pad")
# value range name -> (low, high) of the input values that map to bytes 0..255
VALUE_RANGES = {"0-1": (0.0, 1.0), "0-255": (0.0, 255.0), "-1-1": (-1.0, 1.0)}
# Pillow's own guard, set explicitly: Image.open refuses a declared size over twice it.
# open_image applies its per-call limit itself, so this is only ever raised, never lowered
# (a small --max-image-pixels must not break other image reading in the same process).
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_IMAGE_PIXELS
# our own check refuses what Pillow would only warn about; its warning is noise then
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageRefused(ValueError):
    """One image file is not decoded: a one-line reason (too big, not an image, corrupt)."""


def image_id(pixels: np.ndarray) -> str:
    """sha256 of the normalised pixels: the identity used to find duplicates."""
    return hashlib.sha256(np.ascontiguousarray(pixels).data).hexdigest()  # the same bytes, not copied


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


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def read_capped(path: str | Path, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The bytes of one file, refusing (without reading it) a file larger than ``max_bytes``."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            data = fh.read(max_bytes + 1) if size <= max_bytes else b""
    except OSError as exc:
        raise ImageRefused(f"cannot read file: {exc.strerror or exc}") from None
    if size > max_bytes or len(data) > max_bytes:
        raise ImageRefused(oversize_reason(max(size, len(data)), max_bytes))
    return data


def oversize_reason(size: int, max_bytes: int) -> str:
    """Why a file (or tar member) of ``size`` bytes is not read."""
    return f"file is {_mib(size)}, over the cap of {_mib(max_bytes)} per file (--max-file-bytes): not read"


def open_image(source: str | Path | bytes, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
               max_bytes: int = DEFAULT_MAX_FILE_BYTES, target: tuple[int, int] | None = None) -> Image.Image:
    """Decode one image file (its first frame), refusing a decompression bomb before decoding.

    Parameters
    ----------
    source : a path (read with :func:`read_capped`) or the file's bytes.
    max_pixels : the most pixels this decode may produce (checked after a JPEG draft, before
        decoding); Pillow's ``Image.MAX_IMAGE_PIXELS`` is raised to it when it is larger.
    max_bytes : the cap on bytes read from a path.
    target : (height, width) the image will be resized to: JPEGs are decoded at the smallest
        DCT scale (1/2, 1/4, 1/8) that still covers it, so a large photo costs little memory.

    Raises
    ------
    ImageRefused with a one-line reason.
    """
    data = read_capped(source, max_bytes) if isinstance(source, (str, Path)) else source
    if not data:
        raise ImageRefused("empty file (0 bytes)")
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels
    limit = f"over the limit of {max_pixels:,} decoded pixels (--max-image-pixels): not decoded"
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
        img.seek(0)  # GIF / multi-frame TIFF: the first frame
        img.info["declared_size"] = img.size  # before a JPEG draft shrinks it
        if target and img.format in ("JPEG", "MPO"):
            img.draft(None, (target[1], target[0]))
        if img.width * img.height > max_pixels:
            raise ImageRefused(f"image too large: {img.width}x{img.height} to decode, {limit}")
        img.load()
    except ImageRefused:
        raise
    except UnidentifiedImageError:
        raise ImageRefused("not a recognised image file (unknown or corrupt format)") from None
    except Image.DecompressionBombError as exc:  # Pillow's own guard, at twice its limit
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        raise ImageRefused(f"image too large: it declares {int(declared[1]) if declared else 0:,} pixels, "
                           f"{limit}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRefused(f"truncated or corrupt image: {exc}") from None
    return img


def decide_value_range(requested: str, dtype: np.dtype, lo: float, hi: float, n_bad: int, clip: bool,
                       where: str) -> str:
    """The value range of one whole source, from its dtype and min/max over all of it.

    ``auto``: integers are 0-255; floats in [0, 1] are 0-1, in [-1, 1] with negatives -1-1,
    within [0, 255] 0-255. Anything else, NaN/inf, or values outside an explicit range
    without ``clip`` is a ValueError naming ``where``, the min/max and the options.
    """
    options = "--value-range 0-1, 0-255 or -1-1 (with --clip to clip values outside it)"
    if requested not in ("auto", *VALUE_RANGES):
        raise ValueError(f"--value-range {requested!r} is not one of auto, {', '.join(VALUE_RANGES)}")
    if n_bad:
        raise ValueError(f"{where}: {n_bad:,} values are NaN or infinite: replace them before ingesting")
    kind = np.dtype(dtype).kind
    if requested == "auto":
        if kind == "b":
            return "0-1"
        if kind in "ui":
            if lo >= 0 and hi <= 255:
                return "0-255"
            raise ValueError(f"{where}: integer values {lo:g}..{hi:g} do not fit 0..255: rescale them "
                             f"to 0..255, or declare {options}")
        if kind != "f":
            raise ValueError(f"{where}: arrays of dtype {dtype} are not images: save integers or floats")
        if lo >= 0 and hi <= 1:
            return "0-1"
        if lo >= -1 and hi <= 1:
            return "-1-1"
        if lo >= 0 and hi <= 255:
            return "0-255"
        raise ValueError(f"{where}: float values {lo:g}..{hi:g} fit none of 0..1, -1..1, 0..255: "
                         f"declare {options}, or rescale them")
    low, high = VALUE_RANGES[requested]
    if (lo < low or hi > high) and not clip:
        raise ValueError(f"{where}: values {lo:g}..{hi:g} are outside --value-range {requested} "
                         f"({low:g}..{high:g}): pass --clip to clip them, or choose another range")
    return requested


def to_uint8(arr: np.ndarray, value_range: str = "0-255") -> np.ndarray:
    """Numeric image values to bytes: ``value_range`` low..high maps to 0..255 (clipped first).

    Element-wise with fixed constants, so one value always gives one byte, whatever batch
    it arrives in.
    """
    low, high = VALUE_RANGES[value_range]
    if arr.dtype == np.uint8 and (low, high) == (0.0, 255.0):
        return arr
    x = np.clip(arr.astype(np.float64), low, high)
    return np.rint((x - low) * (255.0 / (high - low))).astype(np.uint8)
