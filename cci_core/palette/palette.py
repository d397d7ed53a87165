"""Colour palettes learned by k-means over every pixel of a corpus, a partition or one image.

Pixel features (``space``, :mod:`cci_core.palette.colorspace`):

* ``gray`` - the 8-bit intensity, for 1-channel sources;
* ``lab`` - CIELAB (D65), the default for RGB sources: Euclidean distance there is close to
  perceived colour difference, so a k-means palette in Lab looks better than one in RGB;
* ``rgb`` - the sRGB values 0..255, as an option.

Two ways to learn a palette, both over every pixel:

* **histogram** (exact): k-means on the distinct colours weighted by their pixel counts gives
  the same centres, inertia and shares as k-means on the pixels themselves (a Lloyd step only
  needs per-colour sums and counts). For 8-bit gray there are at most 256 bins, so this is the
  path for 1-channel corpora, and there the k-means is solved *globally* by dynamic programming
  (:func:`cci_core.palette.pixel_kmeans.kmeans_1d_optimal`); RGB sources take it when they have
  at most ``max_bins`` distinct colours, with the weighted Lloyd loop
  :func:`cci_core.palette.pixel_kmeans.weighted_kmeans`.
* **pixels**: a Dask array (pixels x channels), block-wise, never copied whole into memory:
  :class:`cci_core.cluster.kmeans.MiniBatchKMeans` finds the centres from mini-batches, then full
  Lloyd passes over all pixels (:func:`cci_core.palette.pixel_kmeans.lloyd_pixels`, per-block
  sums and counts) polish them.

A :class:`Palette` is saved as ``palette.json`` (colours in sRGB and Lab, pixel shares,
inertia) plus ``swatch.png``.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from cci_core.palette.colorspace import check_space, colors_from_features, features, lab_of_colors
from cci_core.palette.pixel_kmeans import kmeans_1d_optimal, lloyd_pixels, weighted_kmeans

METHODS = ("auto", "histogram", "pixels")
FORMAT = "cci-palette/1"
MAX_COLORS = 256  # label maps and rendered indices are uint8
_BLOCK_PIXELS = 1 << 20  # pixels per Dask block of the pixel array


# ----- the palette ------------------------------------------------------------------------

@dataclass
class Palette:
    """k colours learned in ``space``; ``counts`` are the pixels nearest each colour."""
    space: str
    centers: np.ndarray          # (k, d) float64, feature space
    counts: np.ndarray           # (k,) pixels assigned to each colour
    inertia: float               # sum of squared feature distances of every pixel to its colour
    n_pixels: int
    meta: dict = field(default_factory=dict)  # source, method, seed, palette_id, ...

    @property
    def k(self) -> int:
        return len(self.centers)

    @property
    def channels(self) -> int:
        return 1 if self.space == "gray" else 3

    @property
    def colors(self) -> np.ndarray:
        """(k, C) uint8 sRGB (or gray) colours a rendered image uses."""
        return colors_from_features(self.centers, self.space)

    @property
    def lab(self) -> np.ndarray:
        return lab_of_colors(self.colors)

    @property
    def shares(self) -> np.ndarray:
        total = float(np.sum(self.counts))
        return np.asarray(self.counts, dtype=np.float64) / (total or 1.0)

    @property
    def render_features(self) -> np.ndarray:
        """Features of the displayed colours: rendering a rendered image is then the identity."""
        return features(self.colors, self.space, np.float64)

    @property
    def palette_id(self) -> str | None:
        return self.meta.get("palette_id")

    def describe(self) -> list[dict]:
        """One row per colour: index, hex, sRGB, Lab, share, pixels (for tables)."""
        rows = []
        for i, (c, lab, s, n) in enumerate(zip(self.colors, self.lab, self.shares, self.counts)):
            rgb = [int(v) for v in (np.repeat(c, 3) if len(c) == 1 else c)]
            rows.append({"index": i, "hex": "#{:02x}{:02x}{:02x}".format(*tuple(rgb)), "srgb": [int(v) for v in c],
                         "lab": [round(float(v), 3) for v in lab], "share": round(float(s), 6),
                         "pixels": round(float(n))})
        return rows

    def payload(self) -> dict:
        """The content of palette.json without ``palette_id`` (hashed for the content id)."""
        return {"format": FORMAT, "space": self.space, "k": self.k, "channels": self.channels,
                "colors": [{**row, "center": [float(v) for v in ctr]}
                           for row, ctr in zip(self.describe(), self.centers)],
                "inertia": float(self.inertia), "n_pixels": int(self.n_pixels),
                "mse": float(self.inertia) / max(1, int(self.n_pixels)),
                **{k: v for k, v in self.meta.items() if k != "palette_id"}}

    def content_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.payload(), sort_keys=True, default=str).encode()).hexdigest()

    def to_dict(self) -> dict:
        d = self.payload()
        if self.palette_id:
            d["palette_id"] = self.palette_id
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Palette:
        if d.get("format") != FORMAT:
            raise ValueError(f"not a palette file (format {d.get('format')!r}, expected {FORMAT!r})")
        known = {"format", "space", "k", "channels", "colors", "inertia", "n_pixels", "mse"}
        meta = {k: v for k, v in d.items() if k not in known}
        return cls(space=d["space"], centers=np.array([c["center"] for c in d["colors"]], dtype=np.float64),
                   counts=np.array([c["pixels"] for c in d["colors"]], dtype=np.float64),
                   inertia=float(d["inertia"]), n_pixels=int(d["n_pixels"]), meta=meta)

    def save(self, directory: str | Path) -> dict:
        """Write ``palette.json`` and ``swatch.png`` into ``directory``; returns their paths."""
        from cci_core.common.imagegrid import save_png
        from cci_core.store import fs
        from cci_core.store.store import atomic_write_json
        directory = fs.as_path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        js = atomic_write_json(directory / "palette.json", self.to_dict())
        png = save_png(swatch(self), directory / "swatch.png")
        return {"json": str(js), "swatch": str(png)}

    @classmethod
    def load(cls, path: str | Path) -> Palette:
        """From ``palette.json`` or the folder holding it (in a local or an object store)."""
        from cci_core.store import fs
        path = fs.as_path(path)
        if path.is_dir():
            path = path / "palette.json"
        if not path.exists():
            raise FileNotFoundError(f"no palette file {path}")
        from cci_core.store.store import read_json
        return cls.from_dict(read_json(path))  # a file that is not JSON is one error naming it


def swatch(palette: Palette, cell: int = 48, bar: int = 16) -> np.ndarray:
    """A row of colour squares over a strip whose segments are as wide as the pixel shares."""
    colors = palette.colors
    colors = np.repeat(colors, 3, axis=1) if colors.shape[1] == 1 else colors
    _k, width = palette.k, palette.k * cell
    out = np.full((cell + bar + 4, width, 3), 255, np.uint8)
    for i, c in enumerate(colors):
        out[:cell, i * cell:(i + 1) * cell] = c
    edges = np.rint(np.concatenate([[0], np.cumsum(palette.shares)]) * width).astype(int)
    for i, c in enumerate(colors):
        out[cell + 4:, edges[i]:edges[i + 1]] = c
    return out


# ----- sources as Dask pixel arrays -----------------------------------------------------------

def pixel_array(images) -> da.Array:
    """Images (N, H, W, C) or one (H, W, C) image (numpy, zarr or Dask) -> uint8 (pixels, C)."""
    if not isinstance(images, da.Array):
        arr = images if hasattr(images, "chunks") and not isinstance(images, np.ndarray) else np.asarray(images)
        if isinstance(arr, np.ndarray) and arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim == 3:
            arr = arr[None] if isinstance(arr, np.ndarray) else arr
        images = da.from_array(arr, chunks=(max(1, _BLOCK_PIXELS // max(1, arr.shape[1] * arr.shape[2])),
                                            -1, -1, -1)) if isinstance(arr, np.ndarray) else da.from_zarr(arr)
    if images.ndim == 3:
        images = images[None] if images.shape[-1] in (1, 3, 4) else images[..., None]
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    n, h, w, c = images.shape
    images = images.rechunk({1: -1, 2: -1, 3: -1})
    px = images.reshape(n * h * w, c)
    if len(px.chunks[0]) == 1 and px.shape[0] > 2 * _BLOCK_PIXELS // 4:
        px = px.rechunk({0: max(_BLOCK_PIXELS // 4, -(-px.shape[0] // 4))})  # one big image: >= 4 blocks
    elif max(px.chunks[0]) > 4 * _BLOCK_PIXELS:
        px = px.rechunk({0: _BLOCK_PIXELS})
    return px


def feature_array(px: da.Array, space: str) -> da.Array:
    d = 1 if space == "gray" else 3
    return px.map_blocks(lambda b: features(b, space), dtype=np.float32, chunks=(px.chunks[0], (d,)))


def _gray_hist(block) -> np.ndarray:
    return np.bincount(np.asarray(block).ravel(), minlength=256).astype(np.int64)


def _color_codes(block) -> tuple[np.ndarray, np.ndarray]:
    b = np.asarray(block).astype(np.uint32)
    codes = (b[:, 0] << 16) | (b[:, 1] << 8) | b[:, 2]
    return np.unique(codes, return_counts=True)


def color_histogram(px: da.Array, max_bins: int | None = None):
    """Distinct colours of every pixel and their counts: (colours (m, C) uint8, counts (m,)).

    Returns None when an RGB source has more than ``max_bins`` distinct colours (checked on the
    first block first, so a photo-like corpus costs one block, not a full pass).
    """
    blocks = px.to_delayed().ravel()
    if px.shape[1] == 1:
        h = sum(dask.compute(*[dask.delayed(_gray_hist)(b) for b in blocks]))
        vals = np.flatnonzero(h)
        return vals.astype(np.uint8)[:, None], h[vals]
    if max_bins is not None:
        codes, _ = dask.compute(dask.delayed(_color_codes)(blocks[0]))[0]
        if len(codes) > max_bins:
            return None
    parts = dask.compute(*[dask.delayed(_color_codes)(b) for b in blocks])
    codes, inv = np.unique(np.concatenate([p[0] for p in parts]), return_inverse=True)
    if max_bins is not None and len(codes) > max_bins:
        return None
    counts = np.bincount(inv, weights=np.concatenate([p[1] for p in parts]).astype(np.float64)).astype(np.int64)
    colors = np.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255], axis=1).astype(np.uint8)
    return colors, counts


def check_k(k) -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 2:
        raise ValueError(f"--colors must be an integer >= 2, got {k!r}")
    if k > MAX_COLORS:
        raise ValueError(f"--colors {k}: at most {MAX_COLORS} colours (rendered images index them with uint8)")
    return int(k)


def _sorted_by_lightness(centers: np.ndarray, counts: np.ndarray, space: str):
    key = lab_of_colors(colors_from_features(centers, space))[:, 0] + 1e-6 * np.arange(len(centers))
    order = np.lexsort((np.arange(len(centers)), key))
    return centers[order], counts[order]


def learn_palette(images, k: int, space: str | None = None, method: str = "auto", seed: int = 0,
                  max_bins: int = 1 << 18, n_init: int = 4, max_passes: int = 30, tol: float = 1e-4,
                  batch_size: int = 4096, log: Callable[[str], None] | None = None) -> Palette:
    """Learn a k-colour palette from every pixel of ``images`` ((N, H, W, C) or (H, W, C) uint8,
    numpy, zarr or Dask). Colours come out sorted dark to light.

    method : ``histogram`` (exact k-means on the distinct colours with their counts),
        ``pixels`` (mini-batch k-means on the Dask pixel array, then full Lloyd passes) or
        ``auto`` (histogram for gray and for RGB with at most ``max_bins`` distinct colours).
    K larger than the number of distinct colours is clamped to it, with a message to ``log``.
    """
    log = log or (lambda msg: None)
    k = check_k(k)
    if method not in METHODS:
        raise ValueError(f"--method {method!r}: use one of {', '.join(METHODS)}")
    px = pixel_array(images)
    if px.shape[0] == 0:
        raise ValueError("the source has no pixels (0 images)")
    channels = px.shape[1]
    if channels == 4:
        raise ValueError("RGBA pixels: convert to RGB first (cci_core.ingest.images.to_mode)")
    space = check_space(space, channels)
    n_pixels = int(px.shape[0])
    meta = {"space_requested": space, "seed": int(seed)}

    hist = None
    if method in ("histogram", "auto"):
        hist = color_histogram(px, None if method == "histogram" or channels == 1 else max_bins)
    if hist is not None:
        colors, counts = hist
        k = _clamp(k, len(colors), log)
        X = features(colors, space, np.float64)
        if channels == 1:  # 256 bins at most: the globally optimal k-means, by dynamic programming
            centers, _, inertia, cnt = kmeans_1d_optimal(X[:, 0], counts, k)
        else:
            centers, _, inertia, cnt = weighted_kmeans(X, counts, k, n_init=max(1, n_init // 2), seed=seed,
                                                       tol=tol)
        meta.update(method="histogram", n_bins=len(colors))
    else:
        X = feature_array(px, space)
        from cci_core.cluster.kmeans import MiniBatchKMeans
        km = MiniBatchKMeans(n_clusters=k, batch_size=batch_size, max_iter=300, n_init=3, random_state=seed,
                             compute_labels=False)
        try:
            km.fit(X)
        except ValueError as exc:
            if "distinct rows" not in str(exc):
                raise
            colors, counts = color_histogram(px, None)  # few colours after all: exact path
            k = _clamp(k, len(colors), log)
            Xh = features(colors, space, np.float64)
            centers, _, inertia, cnt = weighted_kmeans(Xh, counts, k, n_init=n_init, seed=seed)
            meta.update(method="histogram", n_bins=len(colors))
        else:
            centers, cnt, inertia, passes = lloyd_pixels(X, km.cluster_centers_, max_passes=max_passes, tol=tol)
            meta.update(method="pixels", minibatch_steps=int(km.n_iter_), lloyd_passes=int(passes))
    meta.pop("space_requested")
    centers, cnt = _sorted_by_lightness(np.asarray(centers), np.asarray(cnt, dtype=np.float64), space)
    return Palette(space, centers, cnt, float(inertia), n_pixels, meta)


def _clamp(k: int, distinct: int, log) -> int:
    if distinct < 2:
        raise ValueError(f"the source has only {distinct} distinct colour(s); a palette needs at least 2")
    if k > distinct:
        log(f"--colors {k} is more than the {distinct} distinct colours of the source: using {distinct}")
        return distinct
    return k
