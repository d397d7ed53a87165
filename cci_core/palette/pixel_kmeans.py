"""k-means for palettes, over every pixel: on colour bins weighted by their pixel counts
(:func:`weighted_kmeans`; :func:`kmeans_1d_optimal`, solved globally, for gray), and full
Lloyd passes over a Dask feature array (:func:`lloyd_pixels`); :func:`nearest` assigns.

On colour bins with pixel counts as weights, weighted k-means gives the same centres, inertia
and shares as k-means on the pixels themselves (a Lloyd step only needs per-colour sums and
counts); the project's :class:`cci_core.cluster.kmeans.MiniBatchKMeans` takes no sample weights.
"""
from __future__ import annotations

import dask
import dask.array as da
import numpy as np
from sklearn.cluster import kmeans_plusplus
from threadpoolctl import threadpool_limits

_SLICE = 1 << 16  # pixels per distance computation inside a block (bounds temporary memory)


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    d = (x * x).sum(1)[:, None] - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0)


def nearest(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest centre for every row of x (n, d), computed in slices."""
    x = np.asarray(x)
    c = np.asarray(centers, dtype=x.dtype if x.dtype in (np.float32, np.float64) else np.float64)
    out = np.empty(len(x), dtype=np.int32)
    for s in range(0, len(x), _SLICE):
        out[s:s + _SLICE] = np.argmin(_sq_dist(x[s:s + _SLICE], c), axis=1)
    return out


def _lloyd(X: np.ndarray, w: np.ndarray, centers: np.ndarray, max_iter: int, tol: float = 0.0):
    """Weighted Lloyd iterations until the assignment stops changing (or, with ``tol`` > 0, the
    inertia improves by less than ``tol`` relative)."""
    k, lab, last = len(centers), None, None
    for it in range(1, max_iter + 1):  # noqa: B007 (returned after the loop)
        d2 = _sq_dist(X, centers)
        new_lab = np.argmin(d2, axis=1)
        mind = d2[np.arange(len(X)), new_lab]
        cur = float((w * mind).sum())
        if tol > 0 and last is not None and last - cur <= tol * max(cur, 1e-12):
            break
        last = cur
        cnt = np.bincount(new_lab, weights=w, minlength=k)
        sums = np.stack([np.bincount(new_lab, weights=w * X[:, j], minlength=k) for j in range(X.shape[1])], 1)
        empty = np.flatnonzero(cnt == 0)
        centers = centers.copy()
        hit = cnt > 0
        centers[hit] = sums[hit] / cnt[hit, None]
        if empty.size:  # move empty centres onto the points that cost most
            far = np.argsort(-(w * mind))[:empty.size]
            centers[empty] = X[far]
        elif lab is not None and np.array_equal(new_lab, lab):
            break
        lab = new_lab
    d2 = _sq_dist(X, centers)
    lab = np.argmin(d2, axis=1)
    diff = X - centers[lab]
    inertia = float((w * np.einsum("ij,ij->i", diff, diff)).sum())
    return centers, lab, inertia, it


def weighted_kmeans(X: np.ndarray, w: np.ndarray, k: int, n_init: int = 4, max_iter: int = 300,
                    seed: int = 0, init: np.ndarray | None = None, tol: float = 0.0):
    """Exact k-means on weighted points (colour bins): k-means++ starts, Lloyd to convergence.

    Returns (centers (k, d), labels (m,), inertia, counts (k,)). On colour bins with pixel
    counts as weights this is k-means on every pixel.
    """
    X = np.asarray(X, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    best = None
    with threadpool_limits(1, user_api="blas"):
        for s in range(1 if init is not None else n_init):
            c0 = (np.asarray(init, dtype=np.float64) if init is not None else
                  kmeans_plusplus(X, k, sample_weight=w, random_state=int(seed) * 7919 + s)[0])
            c, lab, inertia, _ = _lloyd(X, w, c0, max_iter, tol)
            if best is None or inertia < best[2] - 1e-9 * max(1.0, abs(inertia)):
                best = (c, lab, inertia)
    c, lab, inertia = best
    return c, lab, inertia, np.bincount(lab, weights=w, minlength=k)


def kmeans_1d_optimal(values: np.ndarray, w: np.ndarray, k: int):
    """Globally optimal weighted k-means in one dimension (dynamic programming over the sorted
    values, O(k m^2) for m values: instant for 256 gray bins). Returns (centers (k, 1), labels
    (m,), inertia, counts (k,)) for ``values`` in their given order."""
    values = np.asarray(values, dtype=np.float64).ravel()
    w = np.asarray(w, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    x, ww = values[order], w[order]
    m = len(x)
    W = np.concatenate([[0.0], np.cumsum(ww)])
    S1 = np.concatenate([[0.0], np.cumsum(ww * x)])
    S2 = np.concatenate([[0.0], np.cumsum(ww * x * x)])
    i, j = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")  # segment x[i..j]
    valid = i <= j
    wsum = np.where(valid, W[j + 1] - W[i], 1.0)
    s1 = np.where(valid, S1[j + 1] - S1[i], 0.0)
    cost = np.where(valid, np.maximum(S2[j + 1] - S2[i] - s1 * s1 / wsum, 0.0), np.inf)
    D = cost[0].copy()  # D[j]: best cost of x[0..j] in 1 cluster
    back = np.zeros((k, m), dtype=np.int64)
    for c in range(1, k):
        prev = np.concatenate([[np.inf], D[:-1]])  # a new cluster starts at i: x[0..i-1] in c clusters
        tot = prev[:, None] + cost
        back[c] = np.argmin(tot, axis=0)
        D = tot[back[c], np.arange(m)]
    bounds, j = [], m - 1
    for c in range(k - 1, -1, -1):
        start = back[c][j] if c > 0 else 0
        bounds.append((start, j))
        j = start - 1
    bounds.reverse()
    sorted_lab = np.empty(m, dtype=np.int64)
    centers = np.empty((k, 1))
    for c, (a, b) in enumerate(bounds):
        sorted_lab[a:b + 1] = c
        centers[c, 0] = (S1[b + 1] - S1[a]) / (W[b + 1] - W[a])
    lab = np.empty(m, dtype=np.int64)
    lab[order] = sorted_lab
    diff = values - centers[lab, 0]
    return centers, lab, float((w * diff * diff).sum()), np.bincount(lab, weights=w, minlength=k)


def _stats_block(x: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-centre sums (k, d), counts (k,) and inertia of one block of features."""
    k, d = centers.shape
    sums, cnt, inertia = np.zeros((k, d)), np.zeros(k), 0.0
    c = centers.astype(np.float64)
    for s in range(0, len(x), _SLICE):
        xs = np.asarray(x[s:s + _SLICE], dtype=np.float64)
        lab = np.argmin(_sq_dist(xs, c), axis=1)
        cnt += np.bincount(lab, minlength=k)
        for j in range(d):
            sums[:, j] += np.bincount(lab, weights=xs[:, j], minlength=k)
        diff = xs - c[lab]
        inertia += float(np.einsum("ij,ij->", diff, diff))
    return sums, cnt, inertia


def pixel_stats(X: da.Array, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """One parallel pass over every pixel: per-centre sums, counts, inertia (block order)."""
    parts = dask.compute(*[dask.delayed(_stats_block)(b, centers) for b in X.to_delayed().ravel()])
    return (sum(p[0] for p in parts), sum(p[1] for p in parts), float(sum(p[2] for p in parts)))


def lloyd_pixels(X: da.Array, centers: np.ndarray, max_passes: int = 30, tol: float = 1e-6):
    """Full Lloyd passes over a Dask feature array; stops when the inertia gains less than
    ``tol`` (relative) or the centres stop moving. Returns (centers, counts, inertia, passes)."""
    centers = np.asarray(centers, dtype=np.float64)
    last = None
    with threadpool_limits(1, user_api="blas"):
        for p in range(1, max_passes + 1):
            sums, cnt, inertia = pixel_stats(X, centers)
            if last is not None and last - inertia <= tol * max(inertia, 1e-12):
                return centers, cnt, inertia, p
            hit = cnt > 0
            new = centers.copy()
            new[hit] = sums[hit] / cnt[hit, None]
            if np.array_equal(new, centers):
                return centers, cnt, inertia, p
            centers, last = new, inertia
        sums, cnt, inertia = pixel_stats(X, centers)
    return centers, cnt, inertia, max_passes
