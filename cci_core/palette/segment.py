"""Segmentation by per-image k-means on pixel features.

Features: the gray intensity (1-channel) or Lab / RGB colour, standardised per feature by
default, plus an optional (x, y) position scaled by ``position_weight`` (0: colour only,
larger: more compact regions). Without position the k-means runs exactly on the distinct
colours weighted by their counts (:func:`cci_core.palette.pixel_kmeans.weighted_kmeans`).

Labels come out ordered dark to light (label 0 is the darkest segment), as uint8.
"""
from __future__ import annotations

import numpy as np

from cci_core.palette.colorspace import check_space, features, lab_of_colors
from cci_core.palette.pixel_kmeans import weighted_kmeans

# qualitative colours for the overlay (Tableau 10, then 10 lighter ones)
OVERLAY_COLORS = np.array([
    [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
    [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207], [174, 199, 232], [255, 187, 120],
    [152, 223, 138], [255, 152, 150], [197, 176, 213], [196, 156, 148], [247, 182, 210], [199, 199, 199],
    [219, 219, 141], [158, 218, 229]], dtype=np.uint8)


def check_k(k) -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 2:
        raise ValueError(f"--k must be an integer >= 2, got {k!r}")
    if k > 255:
        raise ValueError(f"--k {k}: at most 255 segments (labels are uint8)")
    return int(k)


def _standardise(f: np.ndarray) -> np.ndarray:
    sd = f.std(axis=0)
    return (f - f.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def segment_image(image: np.ndarray, k: int = 5, space: str | None = None, position_weight: float = 0.0,
                  standardize: bool = True, seed: int = 0, n_init: int = 3, log=None) -> tuple[np.ndarray, dict]:
    """Label map (H, W) uint8 of one image (H, W, C) uint8, and a summary dict."""
    log = log or (lambda msg: None)
    k = check_k(k)
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"image must be uint8 (H, W, C), got {image.dtype} {image.shape}")
    if position_weight < 0:
        raise ValueError(f"--position-weight must be >= 0, got {position_weight}")
    h, w, c = image.shape
    space = check_space(space, c)
    flat = image.reshape(-1, c)
    if position_weight == 0:
        colors, inv, counts = np.unique(flat, axis=0, return_inverse=True, return_counts=True)
        inv = inv.ravel()
        X, wts = features(colors, space, np.float64), counts.astype(np.float64)
    else:
        X, wts, inv = features(flat, space, np.float64), np.ones(h * w), None
        colors = None
    distinct = len(colors) if colors is not None else len(np.unique(flat, axis=0))
    if distinct < 2 and position_weight == 0:
        raise ValueError("the image has a single colour: nothing to segment")
    if k > distinct and position_weight == 0:
        log(f"--k {k} is more than the {distinct} distinct colours of the image: using {distinct}")
        k = distinct
    if standardize:
        mean = np.average(X, axis=0, weights=wts)
        sd = np.sqrt(np.average((X - mean) ** 2, axis=0, weights=wts))
        X = (X - mean) / np.where(sd > 0, sd, 1.0)
    if position_weight > 0:
        yy, xx = np.mgrid[0:h, 0:w]
        pos = _standardise(np.stack([yy.ravel(), xx.ravel()], 1).astype(np.float64))
        X = np.concatenate([X, position_weight * pos], axis=1)
    _centers, lab, inertia, _cnt = weighted_kmeans(X, wts, k, n_init=n_init, seed=seed)
    lab = lab[inv] if inv is not None else lab
    # order segments by mean lightness (dark first)
    light = lab_of_colors(flat)[:, 0] if c == 3 else flat[:, 0].astype(np.float64)
    mean_l = np.bincount(lab, weights=light, minlength=k) / np.maximum(np.bincount(lab, minlength=k), 1)
    order = np.argsort(mean_l, kind="stable")
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k)
    labels = rank[lab].astype(np.uint8).reshape(h, w)
    sizes = np.bincount(labels.ravel(), minlength=k)
    return labels, {"k": int(k), "space": space, "position_weight": float(position_weight),
                    "standardize": bool(standardize), "inertia": float(inertia),
                    "sizes": [int(s) for s in sizes], "shape": [h, w, c]}


def segment_images(images: np.ndarray, k: int = 5, **options) -> np.ndarray:
    """Label maps (N, H, W) uint8 of images (N, H, W, C), one k-means per image."""
    images = np.asarray(images)
    return np.stack([segment_image(img, k, **options)[0] for img in images]) if len(images) else \
        np.zeros(images.shape[:3], np.uint8)


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image (as RGB) with each segment tinted in its own colour, (H, W, 3) uint8."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
    tint = OVERLAY_COLORS[np.asarray(labels) % len(OVERLAY_COLORS)]
    out = (1 - alpha) * rgb.astype(np.float64) + alpha * tint
    # segment borders in black
    lab = np.asarray(labels)
    edge = np.zeros(lab.shape, bool)
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    out[edge] *= 0.3
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
