"""Colour spaces of a palette's pixel features: sRGB <-> CIELAB (D65) and the feature space of
a source (``gray`` for 1-channel, ``lab`` by default for RGB, ``rgb`` as an option).

Euclidean distance in CIELAB is close to perceived colour difference, so a k-means palette in
Lab looks better than one in RGB.
"""
from __future__ import annotations

import numpy as np

SPACES = ("gray", "lab", "rgb")

_M = np.array([[0.412453, 0.357580, 0.180423],
               [0.212671, 0.715160, 0.072169],
               [0.019334, 0.119193, 0.950227]])  # linear sRGB -> XYZ (D65), as scikit-image
_M_INV = np.linalg.inv(_M)
_WHITE = np.array([0.95047, 1.0, 1.08883])
_c = np.arange(256) / 255.0
_LINEAR_LUT = np.where(_c <= 0.04045, _c / 12.92, ((_c + 0.055) / 1.055) ** 2.4)


def srgb_to_lab(rgb: np.ndarray, dtype=np.float32) -> np.ndarray:
    """sRGB (..., 3) -> CIELAB (..., 3). uint8 input goes through a 256-entry table."""
    rgb = np.asarray(rgb)
    if rgb.dtype == np.uint8:
        lin = _LINEAR_LUT.astype(dtype)[rgb]
    else:
        c = np.clip(rgb.astype(np.float64) / 255.0, 0, 1)
        lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(dtype)
    xyz = lin @ (_M / _WHITE[:, None]).T.astype(dtype)
    f = np.where(xyz > 0.008856, np.cbrt(np.maximum(xyz, 0)), 7.787 * xyz + 16.0 / 116.0)
    lab = np.empty_like(f)
    lab[..., 0] = 116.0 * f[..., 1] - 16.0
    lab[..., 1] = 500.0 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200.0 * (f[..., 1] - f[..., 2])
    return lab.astype(dtype, copy=False)


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB (..., 3) -> sRGB floats in [0, 255] (out-of-gamut colours clipped)."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([lab[..., 1] / 500.0 + fy, fy, fy - lab[..., 2] / 200.0], axis=-1)
    xyz = np.where(f ** 3 > 0.008856, f ** 3, (f - 16.0 / 116.0) / 7.787) * _WHITE
    lin = np.clip(xyz @ _M_INV.T, 0, 1)
    c = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
    return np.clip(c * 255.0, 0, 255)


def default_space(channels: int) -> str:
    return "gray" if channels == 1 else "lab"


def check_space(space: str | None, channels: int) -> str:
    """The feature space for a source with ``channels`` channels (one-line errors)."""
    if channels not in (1, 3):
        raise ValueError(f"images with {channels} channels are not supported: use 1 (gray) or 3 (RGB)")
    space = (space or default_space(channels)).lower()
    if space not in SPACES:
        raise ValueError(f"--space {space!r}: use one of {', '.join(SPACES)}")
    if channels == 1 and space != "gray":
        raise ValueError(f"--space {space}: the source is 1-channel (gray); use --space gray")
    if channels == 3 and space == "gray":
        raise ValueError("--space gray: the source is RGB; use --space lab (default) or rgb")
    return space


def features(pixels: np.ndarray, space: str, dtype=np.float32) -> np.ndarray:
    """uint8 pixels (..., C) -> features (n, d) in ``space``."""
    pixels = np.asarray(pixels)
    if space == "gray":
        return pixels.reshape(-1, 1).astype(dtype)
    if space == "rgb":
        return pixels.reshape(-1, 3).astype(dtype)
    return srgb_to_lab(pixels.reshape(-1, 3), dtype)


def colors_from_features(centers: np.ndarray, space: str) -> np.ndarray:
    """Feature-space centres (k, d) -> displayable sRGB colours (k, C) uint8."""
    centers = np.asarray(centers, dtype=np.float64)
    rgb = lab_to_srgb(centers) if space == "lab" else centers
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def lab_of_colors(colors: np.ndarray) -> np.ndarray:
    """sRGB uint8 colours (k, 1 or 3) -> Lab (k, 3) float64 (gray as R = G = B)."""
    colors = np.asarray(colors, dtype=np.uint8)
    if colors.shape[-1] == 1:
        colors = np.repeat(colors, 3, axis=-1)
    return srgb_to_lab(colors, np.float64)
