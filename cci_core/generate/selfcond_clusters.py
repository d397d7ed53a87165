"""Conditions from the discriminator's own features: the re-clustering steps of the self-conditioned GAN
(:mod:`cci_core.generate.selfcond`), pure functions of arrays.

k-means passes use the project's distributed assignment
(:meth:`cci_core.cluster.kmeans.MiniBatchKMeans.predict` over a Dask array); new ids are Hungarian-matched
to the old ones (:func:`cci_core.cluster.cluster_metrics.match_labels`), so a condition keeps its meaning.
"""
from __future__ import annotations

import numpy as np

from cci_core.cluster.cluster_metrics import match_labels


def discriminator_features(D, images, n_rows: int | None = None, batch_size: int = 1024,
                           rows: np.ndarray | None = None) -> np.ndarray:
    """``D.features(x)`` of uint8 images (N, H, W, C) (numpy or zarr), batch by batch: (N, F) float32."""
    import torch

    from cci_core.generate.image_batches import take_rows, to_signed_tensor
    device = next(D.parameters()).device
    n = images.shape[0] if n_rows is None else int(n_rows)
    out = []
    was = D.training
    D.eval()
    with torch.no_grad():
        if rows is None:
            for s in range(0, n, batch_size):
                x = to_signed_tensor(np.asarray(images[s:min(n, s + batch_size)]), device)
                out.append(D.features(x).float().cpu().numpy())
        else:
            for s in range(0, len(rows), batch_size):
                out.append(D.features(to_signed_tensor(take_rows(images, rows[s:s + batch_size]), device)).float().cpu().numpy())
    D.train(was)
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, D.cfg.d_features), np.float32)


def cluster_means(X: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(k, F) mean of each cluster's rows (zeros for an empty one), (k,) row counts."""
    from cci_core.cluster.cluster_metrics import group_sums
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    sums = group_sums(np.asarray(X, np.float64), labels, k)
    return sums / np.maximum(counts, 1)[:, None], counts


def kmeans_from(X: np.ndarray, centres: np.ndarray, max_iter: int = 20, chunk_rows: int = 16384):
    """k-means passes from ``centres``: assign (the project's distributed assignment over a
    Dask array), recompute means, until no id changes. An empty cluster takes the row
    farthest from its centre. Returns (labels (N,) int32, centres (k, F), passes)."""
    import dask.array as da

    from cci_core.cluster.kmeans import MiniBatchKMeans
    X = np.asarray(X, np.float64)
    k = len(centres)
    km = MiniBatchKMeans(n_clusters=k, compute_labels=False)
    Xd = da.from_array(X, chunks=(chunk_rows, X.shape[1]))
    labels, passes = None, 0
    centres = np.asarray(centres, np.float64).copy()
    for passes in range(1, max_iter + 1):  # noqa: B007 (returned after the loop)
        km.cluster_centers_ = centres
        new = np.asarray(km.predict(Xd).compute(), np.int32)
        means, counts = cluster_means(X, new, k)
        for e in np.flatnonzero(counts == 0):  # keep k conditions alive
            d2 = ((X - means[new]) ** 2).sum(1)
            far = int(np.argmax(d2))
            new[far] = e
            means, counts = cluster_means(X, new, k)
        centres = means
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
    return labels, centres, passes


def initial_clusters(X: np.ndarray, k: int, seed: int = 0, max_iter: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """k-means++ / mini-batch k-means (the project's), then k-means passes to convergence."""
    from cci_core.cluster.kmeans import MiniBatchKMeans
    km = MiniBatchKMeans(n_clusters=k, batch_size=min(1024, len(X)), random_state=seed, compute_labels=False)
    km.fit(np.asarray(X, np.float64))
    labels, centres, _ = kmeans_from(X, km.cluster_centers_, max_iter)
    return labels, centres


def recluster(X: np.ndarray, previous: np.ndarray, k: int, max_iter: int = 20) -> dict:
    """Re-cluster features ``X`` starting from the previous clusters' means in X; new ids
    Hungarian-matched to ``previous``. On features where ``previous`` is already a k-means
    fixed point every id stays the same.

    Returns dict with ``labels`` (N,) int32, ``centres`` (k, F), ``changed`` (share of rows whose
    id changed), ``passes``.
    """
    previous = np.asarray(previous, np.int32)
    start, counts = cluster_means(X, previous, k)
    if (counts == 0).any():  # a condition with no rows: start it on a far row
        d2 = ((np.asarray(X, np.float64) - start[previous]) ** 2).sum(1)
        for j, e in enumerate(np.flatnonzero(counts == 0)):
            start[e] = X[np.argsort(d2)[-(j + 1)]]
    labels, centres, passes = kmeans_from(X, start, max_iter)
    matched = match_labels(previous, labels, k)
    if not np.array_equal(matched, labels):
        perm = np.zeros(k, np.int64)  # new id -> matched id, to carry the centres along
        for old, new in zip(labels, matched):
            perm[old] = new
        centres = centres[np.argsort(perm)]
        labels = matched
    return {"labels": labels.astype(np.int32), "centres": centres, "passes": passes,
            "changed": float((labels != previous).mean())}


def label_scores(labels: np.ndarray, y: np.ndarray | None) -> dict:
    """ACC, NMI and ARI of ``labels`` against true labels ``y`` ({} without them)."""
    if y is None:
        return {}
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from cci_core.cluster.cluster_metrics import cluster_acc
    return {"acc": cluster_acc(y, labels), "nmi": float(normalized_mutual_info_score(y, labels)),
            "ari": float(adjusted_rand_score(y, labels))}
