"""Pictures of a clustering: per-cluster montages of the images nearest each centre, and a
2-D scatter of the first two components coloured by cluster (PNG, matplotlib Agg)."""
from __future__ import annotations

from pathlib import Path

import dask
import dask.array as da
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cci_core.cluster.features import lazy_images
from cci_core.common.imagegrid import make_grid, save_labelled_rows, save_png
from cci_core.store import fs


def _block_nearest(x, lab, offset, centers, n):
    """Per cluster: up to n (distance, global row) pairs nearest its centre in this block."""
    x = np.asarray(x, dtype=np.float64)
    out = {}
    keep = lab >= 0
    d = np.full(len(x), np.inf)
    d[keep] = ((x[keep] - centers[lab[keep]]) ** 2).sum(1)
    for c in np.unique(lab[keep]):
        idx = np.flatnonzero(lab == c)
        if idx.size > n:
            idx = idx[np.argpartition(d[idx], n - 1)[:n]]
        out[int(c)] = (d[idx], idx + offset)
    return out


def nearest_to_centers(X, labels, centers, n_per_cluster: int = 16) -> list[np.ndarray]:
    """Row indices of the ``n_per_cluster`` rows nearest each centre, nearest first.

    Parameters
    ----------
    X : (N, D) numpy or Dask array (the clustering space)
    labels : (N,) int; a row only counts for its own cluster
    centers : (k, D)

    Returns
    -------
    list of k int64 arrays (shorter for small clusters, empty for empty ones)
    """
    labels = np.asarray(labels)
    centers = np.asarray(centers, dtype=np.float64)
    if n_per_cluster < 1:
        raise ValueError(f"n_per_cluster must be >= 1, got {n_per_cluster}")
    if isinstance(X, da.Array):
        X = X.rechunk({1: -1}) if X.numblocks[1] != 1 else X
        bounds = np.cumsum((0,) + X.chunks[0])
        blocks = X.to_delayed().ravel()
    else:
        bounds, blocks = np.array([0, len(X)]), [np.asarray(X)]
    if labels.size != bounds[-1]:
        raise ValueError(f"labels has {labels.size} rows but X has {bounds[-1]}")
    parts = dask.compute(*[dask.delayed(_block_nearest)(b, labels[bounds[i]:bounds[i + 1]],
                                                        int(bounds[i]), centers, n_per_cluster)
                           for i, b in enumerate(blocks)])
    result = []
    for c in range(len(centers)):
        got = [p[c] for p in parts if c in p]
        if not got:
            result.append(np.zeros(0, np.int64))
            continue
        d = np.concatenate([g[0] for g in got])
        rows = np.concatenate([g[1] for g in got])
        order = np.lexsort((rows, d))[:n_per_cluster]  # ties broken by row id
        result.append(rows[order].astype(np.int64))
    return result


def _fetch_images(images, rows: np.ndarray, n_rows: int | None) -> np.ndarray:
    if rows.size == 0:
        return np.zeros((0,) + tuple(images.shape[1:]), np.uint8)
    order = np.argsort(rows)
    if hasattr(images, "get_orthogonal_selection"):  # Zarr: one read of the chunks holding the rows
        got = np.asarray(images.get_orthogonal_selection((rows[order],)))
    else:
        got = np.asarray(lazy_images(images, n_rows)[rows[order]].compute())
    out = np.empty_like(got)
    out[order] = got
    return out


def save_cluster_montages(images, X, labels, centers, out_dir, n_per_cluster: int = 16,
                          n_rows: int | None = None, scale: int = 2) -> list[Path]:
    """Write ``cluster-<c>.png`` for every cluster: its images nearest the centre, nearest
    first, plus ``clusters.png`` with one row per cluster, labelled with its id and size.

    images : (N, H, W[, C]) uint8 zarr / numpy / dask, row i belongs to X[i]
    """
    out_dir = fs.as_path(out_dir)
    nearest = nearest_to_centers(X, labels, centers, n_per_cluster)
    # every cluster's rows in one read: the rows of 100 clusters are spread over most chunks,
    # and a read per cluster decompressed each chunk up to 100 times
    wanted = np.unique(np.concatenate(nearest)) if nearest else np.zeros(0, np.int64)
    fetched = _fetch_images(images, wanted, n_rows)
    paths, rows_of_grid = [], []
    for c, rows in enumerate(nearest):
        imgs = fetched[np.searchsorted(wanted, rows)]
        paths.append(save_png(make_grid(imgs), out_dir / f"cluster-{c}.png", scale=scale))
        pad = np.full((n_per_cluster - len(imgs),) + imgs.shape[1:], 255, np.uint8)
        rows_of_grid.append(np.concatenate([imgs, pad]) if len(pad) else imgs)
    if rows_of_grid:
        overview = make_grid(np.concatenate(rows_of_grid), ncols=n_per_cluster)
        sizes = np.bincount(np.asarray(labels)[np.asarray(labels) >= 0], minlength=len(rows_of_grid))
        paths.append(save_labelled_rows(overview, [f"cluster {c}: {sizes[c]}" for c in range(len(rows_of_grid))],
                                        out_dir / "clusters.png", scale=scale))
    return paths


def save_scatter(X, labels, path, max_points: int = 20000, seed: int = 0,
                 title: str | None = None) -> Path:
    """Scatter of columns 0 and 1 of X (e.g. the first two principal components) for a
    seeded sample of at most ``max_points`` rows, coloured by cluster; noise in grey."""
    labels = np.asarray(labels)
    n = labels.size
    if X.shape[0] != n or X.ndim != 2 or X.shape[1] < 2:
        raise ValueError(f"X must have shape ({n}, >=2), got {X.shape}")
    rows = np.arange(n) if n <= max_points else np.sort(
        np.random.default_rng(seed).choice(n, max_points, replace=False))
    xy = X[rows][:, :2]
    xy = np.asarray(xy.compute() if isinstance(xy, da.Array) else xy)
    lab = labels[rows]
    fig = Figure(figsize=(7, 6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    noise = lab < 0
    if noise.any():
        ax.scatter(xy[noise, 0], xy[noise, 1], s=2, c="lightgrey", label="noise")
    k = int(lab.max()) + 1 if (~noise).any() else 0
    cmap = "tab10" if k <= 10 else "tab20" if k <= 20 else "turbo"
    sc = ax.scatter(xy[~noise, 0], xy[~noise, 1], s=2, c=lab[~noise], cmap=cmap,
                    vmin=0, vmax=max(k - 1, 1))
    if k:
        fig.colorbar(sc, ax=ax, label="cluster")
    ax.set_xlabel("component 1")
    ax.set_ylabel("component 2")
    ax.set_title(title or f"{len(rows)} of {n} rows, {k} clusters")
    path = fs.as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return fs.savefig(fig, path)
