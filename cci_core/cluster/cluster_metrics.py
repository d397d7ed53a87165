"""Clustering quality metrics: internal (inertia, silhouette, Davies–Bouldin,
Calinski–Harabasz, sizes) and external against known labels (ACC, NMI, ARI, purity),
plus Hungarian relabelling for stable cluster ids across rounds.

Internal metrics take numpy or dask arrays; the exact ones (inertia, DB, CH) are
computed in block passes, silhouette on a seeded row sample whose size is reported.
Rows labelled -1 (noise, from DBSCAN/HDBSCAN) are left out of internal metrics.
"""
from __future__ import annotations

import math

import dask
import dask.array as da
import numpy as np
import sklearn
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as skm
from threadpoolctl import threadpool_limits

SILHOUETTE_WORKING_MB = 64  # scikit-learn working memory for the sampled silhouette's distances


def _as_labels(labels, name: str = "labels") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {labels.dtype}")
    return labels.astype(np.int64, copy=False)


def _contingency(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Counts table of shape (n_pred_ids, n_true_ids) over the distinct ids of each."""
    _, t = np.unique(y_true, return_inverse=True)
    _, p = np.unique(y_pred, return_inverse=True)
    table = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(table, (p, t), 1)
    return table


def cluster_acc(y_true, y_pred) -> float:
    """Clustering accuracy: best one-to-one map of cluster ids to classes (Hungarian)."""
    y_true, y_pred = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length ({y_true.size} vs {y_pred.size})")
    if y_true.size == 0:
        raise ValueError("cluster_acc needs at least one label, got none")
    table = _contingency(y_true, y_pred)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / y_true.size)


def purity(y_true, y_pred) -> float:
    """Fraction of rows whose cluster's majority class is their class."""
    y_true, y_pred = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    if y_true.size == 0:
        raise ValueError("purity needs at least one label, got none")
    return float(_contingency(y_true, y_pred).max(axis=1).sum() / y_true.size)


def match_labels(reference, new, k: int) -> np.ndarray:
    """Relabel ``new`` so its cluster ids best agree with ``reference`` (Hungarian).

    Parameters
    ----------
    reference, new : int arrays of shape (n,), ids in [0, k) (``-1`` = noise, kept as is)
    k : number of cluster ids

    Returns
    -------
    ndarray of shape (n,): ``new`` with ids permuted; a partition equal to
    ``reference`` up to renaming comes back equal to ``reference``.
    """
    reference, new = _as_labels(reference, "reference"), _as_labels(new, "new")
    if reference.shape != new.shape:
        raise ValueError(f"reference and new differ in length ({reference.size} vs {new.size})")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    for name, lab in (("reference", reference), ("new", new)):
        if lab.size and (lab.max() >= k or lab.min() < -1):
            raise ValueError(f"{name} has ids outside [-1, {k}); pass the right k")
    both = (reference >= 0) & (new >= 0)
    table = np.zeros((k, k), dtype=np.int64)
    np.add.at(table, (new[both], reference[both]), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    mapping = np.arange(k)
    mapping[rows] = cols
    out = new.copy()
    out[new >= 0] = mapping[new[new >= 0]]
    return out


# ----- internal metrics over blocks ------------------------------------------------------


def _as_dask(X) -> da.Array:
    if isinstance(X, da.Array):
        X = X if X.ndim == 2 else X.reshape(X.shape[0], -1)
        return X.rechunk({1: -1}) if X.numblocks[1] != 1 else X
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_rows, n_features), got shape {X.shape}")
    return da.from_array(X, chunks=(max(1, min(len(X), 65536)), -1))


def _label_blocks(labels: np.ndarray, X: da.Array) -> da.Array:
    return da.from_array(labels, chunks=(X.chunks[0],))


def group_sums(x: np.ndarray, lab: np.ndarray, k: int) -> np.ndarray:
    """Row sums per label, shape (k, D), float64; rows with label < 0 are skipped."""
    keep = lab >= 0
    x, lab = x[keep], lab[keep]
    sums = np.zeros((k, x.shape[1]))
    if lab.size:
        order = np.argsort(lab, kind="stable")
        ids, starts = np.unique(lab[order], return_index=True)
        sums[ids] = np.add.reduceat(np.asarray(x[order], dtype=np.float64), starts, axis=0)
    return sums


def _block_sums(x, lab, k):
    x = np.asarray(x, dtype=np.float64)
    keep = lab >= 0
    counts = np.bincount(lab[keep], minlength=k)
    sq = float(np.einsum("ij,ij->", x[keep], x[keep]))
    return group_sums(x, lab, k)[None], counts[None], np.array([sq])


def _cluster_stats(X: da.Array, lab: da.Array, k: int):
    """Per-cluster sums (k, D), counts (k,), total sum of squares, in one pass."""
    parts = [dask.delayed(_block_sums)(xb, lb, k)
             for xb, lb in zip(X.to_delayed().ravel(), lab.to_delayed().ravel())]
    parts = dask.compute(*parts)
    sums = sum(p[0][0] for p in parts)  # fixed block order
    counts = sum(p[1][0] for p in parts)
    sq = sum(float(p[2][0]) for p in parts)
    return sums, counts, sq


def _block_dist(x, lab, centers):
    x = np.asarray(x, dtype=np.float64)
    keep = lab >= 0
    d = np.sqrt(np.maximum(((x[keep] - centers[lab[keep]]) ** 2).sum(1), 0.0))
    k = len(centers)
    return (np.bincount(lab[keep], weights=d, minlength=k)[None],
            np.bincount(lab[keep], weights=d * d, minlength=k)[None])


def _distance_sums(X: da.Array, lab: da.Array, centers: np.ndarray):
    parts = [dask.delayed(_block_dist)(xb, lb, centers)
             for xb, lb in zip(X.to_delayed().ravel(), lab.to_delayed().ravel())]
    parts = dask.compute(*parts)
    return sum(p[0][0] for p in parts), sum(p[1][0] for p in parts)


def inertia(X, labels, centers) -> float:
    """Sum of squared distances of rows to their assigned centre (noise rows skipped)."""
    Xd = _as_dask(X)
    labels = _as_labels(labels)
    centers = np.asarray(centers, dtype=np.float64)
    if labels.size != Xd.shape[0]:
        raise ValueError(f"labels has {labels.size} rows but X has {Xd.shape[0]}")
    _, sq = _distance_sums(Xd, _label_blocks(labels, Xd), centers)
    return float(sq.sum())


def sample_rows(n: int, sample_size: int, seed: int) -> np.ndarray:
    """Sorted, seeded sample of row indices (all rows when ``sample_size >= n``)."""
    if sample_size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=sample_size, replace=False))


def _take(X, rows: np.ndarray) -> np.ndarray:
    if isinstance(X, da.Array):
        return np.asarray(X[rows].compute(), dtype=np.float64).reshape(len(rows), -1)
    return np.asarray(X, dtype=np.float64)[rows].reshape(len(rows), -1)


def silhouette(X, labels, sample_size: int = 10000, seed: int = 0) -> tuple[float | None, int]:
    """Mean silhouette on a seeded sample of non-noise rows.

    Returns
    -------
    (score or None when fewer than 2 clusters / too few rows in the sample, sample size used)
    """
    labels = _as_labels(labels)
    valid = np.flatnonzero(labels >= 0)
    rows = valid[sample_rows(valid.size, sample_size, seed)]
    lab = labels[rows]
    n_lab = np.unique(lab).size
    if n_lab < 2 or n_lab > rows.size - 1:
        return None, int(rows.size)
    # scikit-learn's default working memory (1 GiB) holds the 10,000 x 10,000 distances at once
    # (+0.8 GB in the worker); 64 MiB slices give the same score, faster
    with sklearn.config_context(working_memory=SILHOUETTE_WORKING_MB):
        return float(skm.silhouette_score(_take(X, rows), lab)), int(rows.size)


def clustering_report(X, labels, centers=None, y_true=None, sample_size: int = 10000,
                      seed: int = 0) -> dict:
    """All metrics as one JSON-ready dict with plain lower-case keys.

    Parameters
    ----------
    X : (n, d) numpy or dask array, the space the clustering was done in
    labels : (n,) int cluster ids; -1 marks noise (excluded from internal metrics)
    centers : (k, d) centres for ``inertia``; cluster means are used when None
    y_true : (n,) known classes, optional; adds ``acc``, ``nmi``, ``ari``, ``purity``
    sample_size, seed : silhouette sample

    Returns
    -------
    dict with ``n_rows``, ``n_clusters``, ``n_noise``, ``sizes``, ``inertia``,
    ``silhouette``, ``silhouette_sample_size``, ``davies_bouldin``,
    ``calinski_harabasz`` (None where undefined, never NaN) and the external metrics.
    """
    with threadpool_limits(1, user_api="blas"):
        return _report(X, labels, centers, y_true, sample_size, seed)


def _report(X, labels, centers, y_true, sample_size, seed) -> dict:
    Xd = _as_dask(X)
    labels = _as_labels(labels)
    if labels.size != Xd.shape[0]:
        raise ValueError(f"labels has {labels.size} rows but X has {Xd.shape[0]}")
    if labels.size == 0:
        raise ValueError("cannot report on an empty clustering (0 rows)")
    k = int(labels.max()) + 1 if (labels >= 0).any() else 0
    if centers is not None:
        centers = np.asarray(centers, dtype=np.float64)
        if centers.ndim != 2 or centers.shape[1] != Xd.shape[1]:
            raise ValueError(f"centers must have shape (k, {Xd.shape[1]}), got {centers.shape}")
        k = max(k, len(centers))
    lab_d = _label_blocks(labels, Xd)
    report: dict = {"n_rows": int(labels.size), "n_noise": int((labels < 0).sum())}
    if k == 0:
        sums, counts, sq = np.zeros((0, Xd.shape[1])), np.zeros(0, np.int64), 0.0
    else:
        sums, counts, sq = _cluster_stats(Xd, lab_d, k)
    nonempty = counts > 0
    n_valid = int(counts.sum())
    n_clusters = int(nonempty.sum())
    report["n_clusters"] = n_clusters
    report["sizes"] = [int(c) for c in counts]
    means = np.where(nonempty[:, None], sums / np.maximum(counts, 1)[:, None], 0.0)
    ref = centers if centers is not None else means
    if k:
        dist, dist_sq = _distance_sums(Xd, lab_d, ref if len(ref) >= k else means)
        report["inertia"] = float(dist_sq.sum())
    else:
        report["inertia"] = None
    sil, used = silhouette(Xd, labels, sample_size, seed)
    report["silhouette"], report["silhouette_sample_size"] = sil, used
    if 2 <= n_clusters < n_valid:
        # Calinski–Harabasz from the one-pass stats: between / within dispersion.
        grand = sums.sum(0) / n_valid
        within = sq - float((counts[nonempty] * (means[nonempty] ** 2).sum(1)).sum())
        between = float((counts[nonempty] * ((means[nonempty] - grand) ** 2).sum(1)).sum())
        within = max(within, 0.0)
        report["calinski_harabasz"] = (None if within == 0.0 else
                                       float(between * (n_valid - n_clusters) /
                                             (within * (n_clusters - 1))))
        # Davies–Bouldin needs each cluster's mean distance to its own mean.
        mdist, _ = (dist, None) if centers is None else _distance_sums(Xd, lab_d, means)
        s = mdist[nonempty] / counts[nonempty]
        m = means[nonempty]
        sep = np.sqrt(((m[:, None, :] - m[None, :, :]) ** 2).sum(-1))
        np.fill_diagonal(sep, np.inf)
        ratio = (s[:, None] + s[None, :]) / sep
        report["davies_bouldin"] = float(np.max(ratio, axis=1).mean()) if np.isfinite(ratio).all() else None
    else:
        report["calinski_harabasz"] = None
        report["davies_bouldin"] = None
    if y_true is not None:
        y_true = _as_labels(y_true, "y_true")
        if y_true.size != labels.size:
            raise ValueError(f"y_true has {y_true.size} rows but labels has {labels.size}")
        report["acc"] = cluster_acc(y_true, labels)
        report["nmi"] = float(skm.normalized_mutual_info_score(y_true, labels))
        report["ari"] = float(skm.adjusted_rand_score(y_true, labels))
        report["purity"] = purity(y_true, labels)
    for key, val in report.items():  # belt and braces: never hand out NaN
        if isinstance(val, float) and not math.isfinite(val):
            report[key] = None
    return report
