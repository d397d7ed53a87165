"""Render images in a palette: nearest colour per pixel, optional Floyd-Steinberg dithering,
and palette transfer between clusters with a one-to-one colour matching.

Nearest colour is measured in the palette's own space (Lab, RGB or gray) against the features
of the colours the palette *displays* (its centres rounded to 8-bit sRGB), so rendering an
already-rendered image gives back the same image.

Transfer (the palette of cluster A on the images of cluster B): a palette B with the same
number of colours is learned on B's pixels; each of B's colours is matched to one of A's, by
the Hungarian algorithm on Lab distance (``hungarian``) or by lightness rank (``lightness``);
each pixel takes the A colour matched to its nearest B colour.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from cci_core.palette.colorspace import features
from cci_core.palette.palette import Palette
from cci_core.palette.pixel_kmeans import nearest

MODES = ("nearest", "hungarian", "lightness")
MATCHINGS = ("hungarian", "lightness")


def match_colors(src: Palette, dst: Palette, how: str = "hungarian") -> np.ndarray:
    """For each colour of ``src`` a distinct colour of ``dst``: an index array (src.k,).

    ``hungarian`` minimises the summed Lab distance; ``lightness`` pairs colours by their rank
    in L* (spread evenly when ``dst`` has more colours).
    """
    if how not in MATCHINGS:
        raise ValueError(f"matching {how!r}: use one of {', '.join(MATCHINGS)}")
    if src.k > dst.k:
        raise ValueError(f"cannot match {src.k} colours one to one onto a palette of {dst.k}")
    a, b = src.lab, dst.lab
    if how == "hungarian":
        cost = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
        rows, cols = linear_sum_assignment(cost)
        out = np.empty(src.k, dtype=np.int64)
        out[rows] = cols
        return out
    ra = np.argsort(a[:, 0], kind="stable")
    rb = np.argsort(b[:, 0], kind="stable")
    pick = np.rint(np.linspace(0, dst.k - 1, src.k)).astype(int) if src.k > 1 else np.array([0])
    out = np.empty(src.k, dtype=np.int64)
    out[ra] = rb[pick]
    return out


def _fs_dither_py(feat: np.ndarray, centers: np.ndarray) -> np.ndarray:  # pragma: no cover - numba fallback
    h, w, _d = feat.shape
    f = feat.astype(np.float64).copy()
    out = np.empty((h, w), np.int32)
    c_sq = (centers ** 2).sum(1)
    for y in range(h):
        for x in range(w):
            v = f[y, x]
            j = int(np.argmin(c_sq - 2 * centers @ v))
            out[y, x] = j
            e = v - centers[j]
            if x + 1 < w:
                f[y, x + 1] += e * (7 / 16)
            if y + 1 < h:
                if x > 0:
                    f[y + 1, x - 1] += e * (3 / 16)
                f[y + 1, x] += e * (5 / 16)
                if x + 1 < w:
                    f[y + 1, x + 1] += e * (1 / 16)
    return out


_DITHER = None


def _dither_fn():
    global _DITHER
    if _DITHER is None:
        try:
            import numba

            @numba.njit(cache=False, nogil=True)
            def fs(feat, centers):
                h, w, d = feat.shape
                k = centers.shape[0]
                f = feat.astype(np.float64).copy()
                out = np.empty((h, w), np.int32)
                for y in range(h):
                    for x in range(w):
                        best, bd = 0, np.inf
                        for j in range(k):
                            s = 0.0
                            for t in range(d):
                                diff = f[y, x, t] - centers[j, t]
                                s += diff * diff
                            if s < bd:
                                bd, best = s, j
                        out[y, x] = best
                        for t in range(d):
                            e = f[y, x, t] - centers[best, t]
                            if x + 1 < w:
                                f[y, x + 1, t] += e * 0.4375
                            if y + 1 < h:
                                if x > 0:
                                    f[y + 1, x - 1, t] += e * 0.1875
                                f[y + 1, x, t] += e * 0.3125
                                if x + 1 < w:
                                    f[y + 1, x + 1, t] += e * 0.0625
                return out
            _DITHER = fs
        except ImportError:
            _DITHER = _fs_dither_py
    return _DITHER


def _as_nhwc(images: np.ndarray) -> tuple[np.ndarray, bool]:
    images = np.asarray(images)
    single = images.ndim == 3 or images.ndim == 2
    if images.ndim == 2:
        images = images[..., None]
    if single:
        images = images[None]
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, C) or (H, W, C), got {images.dtype} {images.shape}")
    return images, single


def check_channels(palette: Palette, channels: int) -> None:
    if palette.channels < channels:
        pid = palette.palette_id or "the palette"
        raise ValueError(f"palette {pid} has {palette.channels} channel (gray) but the images have {channels}: "
                         f"learn an RGB palette (lab or rgb space) for them")


def labels(images: np.ndarray, palette: Palette, dither: bool = False) -> np.ndarray:
    """Index of the palette colour for every pixel: (N, H, W) int32 (or (H, W) for one image)."""
    images, single = _as_nhwc(images)
    check_channels(palette, images.shape[-1])
    if images.shape[-1] == 4:
        raise ValueError("RGBA images: convert to RGB first (cci_core.ingest.images.to_mode)")
    if images.shape[-1] == 1 and palette.channels == 3:
        images = np.repeat(images, 3, axis=-1)  # a gray image in a colour palette
    n, h, w, _ = images.shape
    centers = palette.render_features
    if dither:
        fs = _dither_fn()
        out = np.stack([fs(features(img, palette.space, np.float64).reshape(h, w, -1), centers)
                        for img in images])
    else:
        out = nearest(features(images, palette.space), centers).reshape(n, h, w)
    return out[0] if single else out


def render(images: np.ndarray, palette: Palette, dither: bool = False, via: Palette | None = None,
           mapping: np.ndarray | None = None) -> np.ndarray:
    """Images drawn in ``palette``'s colours (uint8, ``palette.channels`` channels).

    via, mapping : transfer - assign pixels to ``via``'s colours, then paint colour
        ``mapping[j]`` of ``palette`` for ``via`` colour j (see :func:`match_colors`).
    """
    lut = palette.colors
    if via is not None:
        if mapping is None:
            mapping = match_colors(via, palette)
        lut = lut[np.asarray(mapping)]
    lab = labels(images, via if via is not None else palette, dither=dither)
    return lut[lab]


def transfer(images: np.ndarray, palette: Palette, target_palette: Palette, how: str = "hungarian",
             dither: bool = False) -> np.ndarray:
    """Images (whose own palette is ``target_palette``) drawn in ``palette`` one colour for one."""
    return render(images, palette, dither=dither, via=target_palette,
                  mapping=match_colors(target_palette, palette, how))
