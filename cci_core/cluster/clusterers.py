"""One entry point for every clustering algorithm: k-means on all rows, the others on a
seeded sample, extended to every row.

=============  ====================  ===========================================
algorithm      fitted on             every other row gets
=============  ====================  ===========================================
kmeans         all rows              its nearest centre (one parallel pass)
gmm            sample (EM)           the component with the highest posterior
agglomerative  sample (Ward)         the nearest cluster centroid
dbscan         sample                the label of the nearest core point if it
                                     lies within ``eps``, else noise (-1)
hdbscan        sample                the label of the nearest clustered sample
                                     row, noise (-1) if farther than the
                                     largest core distance of a clustered row
=============  ====================  ===========================================

The result says which happened (``extension``) so reports can state it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import dask
import dask.array as da
import numpy as np
from sklearn.cluster import DBSCAN, HDBSCAN, AgglomerativeClustering
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

from cci_core.cluster.choices import ALGORITHMS
from cci_core.cluster.cluster_metrics import group_sums, sample_rows
from cci_core.cluster.kmeans import MiniBatchKMeans


@dataclass
class ClusterResult:
    """What a clustering produced.

    labels : (N,) int32, -1 = noise (density algorithms only)
    centers : (k, D) float64 centroids of the clusters found (means of their rows)
    algorithm, n_clusters, n_noise : what ran and what came out
    sample_size : rows the algorithm itself saw (N for kmeans)
    extension : one sentence saying how the other rows were labelled ("" when none were)
    model : the fitted estimator (MiniBatchKMeans, GaussianMixture, ...)
    params : the parameters used, JSON-ready
    """

    labels: np.ndarray
    centers: np.ndarray
    algorithm: str
    n_clusters: int
    n_noise: int
    sample_size: int
    extension: str
    model: object = None
    params: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-ready description (no arrays)."""
        return {"algorithm": self.algorithm, "n_clusters": self.n_clusters,
                "n_noise": self.n_noise, "sample_size": self.sample_size,
                "n_rows": int(self.labels.size), "extension": self.extension,
                "params": self.params}


def _blocks(X):
    if isinstance(X, da.Array):
        X = X.rechunk({1: -1}) if X.numblocks[1] != 1 else X
        return X.to_delayed().ravel()
    return [X]


def _map_rows(X, fn) -> np.ndarray:
    """Apply ``fn`` (block -> (n,) labels) to every block in parallel, concatenated in order."""
    parts = [dask.delayed(fn)(b) for b in _blocks(X)]
    return np.concatenate(dask.compute(*parts)).astype(np.int32)


def _nearest_label(points: np.ndarray, labels: np.ndarray, radius: float | None):
    """Block function: label of the nearest of ``points``; -1 beyond ``radius``."""
    nn = NearestNeighbors(n_neighbors=1).fit(points)

    def fn(x):
        dist, idx = nn.kneighbors(np.asarray(x, dtype=np.float64))
        out = labels[idx[:, 0]].copy()
        if radius is not None:
            out[dist[:, 0] > radius] = -1
        return out
    return fn


def centroids(X, labels: np.ndarray, k: int) -> np.ndarray:
    """Mean of each cluster's rows, (k, D); one parallel pass."""
    parts = []
    if isinstance(X, da.Array):
        X = X.rechunk({1: -1}) if X.numblocks[1] != 1 else X
        bounds = np.cumsum((0,) + X.chunks[0])
    else:
        bounds = np.array([0, X.shape[0]])
    for i, b in enumerate(_blocks(X)):
        lab = labels[bounds[i]:bounds[i + 1]]
        parts.append(dask.delayed(lambda x, lab_: group_sums(np.asarray(x, np.float64), lab_, k))(b, lab))
    sums = sum(dask.compute(*parts))
    counts = np.bincount(labels[labels >= 0], minlength=k)
    return np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], 0.0)


def _take(X, rows: np.ndarray) -> np.ndarray:
    if isinstance(X, da.Array):
        return np.asarray(X[rows].compute(), dtype=np.float64)
    return np.asarray(X[rows], dtype=np.float64)


def fit_clusterer(X, algorithm: str = "kmeans", k: int | None = 10, sample_size: int = 20000,
                  seed: int = 0, **params) -> ClusterResult:
    """Cluster the rows of X (numpy or Dask, (N, D) float).

    Parameters
    ----------
    algorithm : one of ``kmeans``, ``gmm``, ``dbscan``, ``hdbscan``, ``agglomerative``
    k : number of clusters (kmeans, gmm, agglomerative); ignored by dbscan/hdbscan
    sample_size : rows the sample-based algorithms are fitted on (seeded draw)
    seed : random seed for the sample and the algorithm
    params : passed to the estimator, e.g. ``eps``/``min_samples`` (dbscan),
        ``min_cluster_size`` (hdbscan), ``covariance_type`` (gmm), ``linkage``
        (agglomerative), ``batch_size``/``n_init`` (kmeans)

    Returns
    -------
    ClusterResult
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_rows, n_features), got shape {X.shape}")
    n = X.shape[0]
    if algorithm in ("kmeans", "gmm", "agglomerative"):
        if k is None or int(k) < 2:
            raise ValueError(f"k must be >= 2 for {algorithm}, got {k}")
        if k > n:
            raise ValueError(f"k={k} is more than the {n} rows; use k <= {n}")
    if sample_size < 2:
        raise ValueError(f"sample_size must be >= 2, got {sample_size}")
    with threadpool_limits(1, user_api="blas"):
        return _fit(X, algorithm, k, sample_size, seed, params)


def _fit(X, algorithm, k, sample_size, seed, params) -> ClusterResult:
    n = X.shape[0]
    if algorithm == "kmeans":
        model = MiniBatchKMeans(k, random_state=seed, **params).fit(X)
        return ClusterResult(model.labels_, model.cluster_centers_, "kmeans", k,
                             0, n, "", model, {"k": k, "seed": seed, **params})

    rows = sample_rows(n, sample_size, seed)
    S = _take(X, rows)
    if not np.isfinite(S).all():
        raise ValueError("X contains NaN or infinite values; clean the features first")
    if k is not None and algorithm in ("gmm", "agglomerative") and k > len(S):
        raise ValueError(f"k={k} is more than the {len(S)} sampled rows; raise sample_size")
    sampled = len(S) < n
    what = f"fitted on a seeded sample of {len(S)} of {n} rows; " if sampled else ""

    if algorithm == "gmm":
        params = {"covariance_type": "diag", "n_init": 1, "max_iter": 200, **params}
        model = GaussianMixture(k, random_state=seed, **params).fit(S)
        labels = _map_rows(X, model.predict) if sampled else model.predict(S).astype(np.int32)
        how = "every row assigned to its most probable Gaussian component"
    elif algorithm == "agglomerative":
        params = {"linkage": "ward", **params}
        model = AgglomerativeClustering(k, **params).fit(S)
        sample_lab = model.labels_.astype(np.int32)
        cent = np.stack([S[sample_lab == c].mean(0) for c in range(k)])
        if sampled:
            labels = _map_rows(X, _nearest_label(cent, np.arange(k, dtype=np.int32), None))
            labels[rows] = sample_lab
        else:
            labels = sample_lab
        how = "the other rows assigned to the nearest cluster centroid"
    elif algorithm == "dbscan":
        min_samples = params.pop("min_samples", 10)
        eps = params.pop("eps", None)
        if eps is None:  # a quantile of the k-distance curve, a common rule of thumb
            dist, _ = NearestNeighbors(n_neighbors=min_samples).fit(S).kneighbors(S)
            eps = float(np.quantile(dist[:, -1], 0.5))
        params = {"eps": float(eps), "min_samples": int(min_samples), **params}
        model = DBSCAN(**params).fit(S)
        sample_lab = model.labels_.astype(np.int32)
        core = model.core_sample_indices_
        if sampled and len(core):
            labels = _map_rows(X, _nearest_label(S[core], sample_lab[core], params["eps"]))
            labels[rows] = sample_lab
        elif sampled:
            labels = np.full(n, -1, np.int32)
        else:
            labels = sample_lab
        how = "the other rows given the label of the nearest core point within eps, else noise"
    else:  # hdbscan
        params = {"min_cluster_size": 25, "copy": True, **params}
        model = HDBSCAN(**params).fit(S)
        sample_lab = model.labels_.astype(np.int32)
        member = sample_lab >= 0
        if sampled and member.any():
            # the farthest a clustered row sits from its min_samples-th neighbour
            m = params.get("min_samples") or params["min_cluster_size"]
            dist, _ = NearestNeighbors(n_neighbors=min(m, len(S))).fit(S).kneighbors(S[member])
            radius = float(dist[:, -1].max())
            labels = _map_rows(X, _nearest_label(S[member], sample_lab[member], radius))
            labels[rows] = sample_lab
        elif sampled:
            labels = np.full(n, -1, np.int32)
        else:
            labels = sample_lab
        how = ("the other rows given the label of the nearest clustered sample row, noise "
               "when farther than the largest core distance")

    labels = np.asarray(labels, dtype=np.int32)
    n_found = int(labels.max()) + 1 if (labels >= 0).any() else 0
    centers = centroids(X, labels, n_found) if n_found else np.zeros((0, X.shape[1]))
    return ClusterResult(labels, centers, algorithm, n_found, int((labels < 0).sum()),
                         len(S), (what + how) if sampled else "", model,
                         {"k": k, "seed": seed, "sample_size": len(S), **params})


def assign_images(images, pca, model, n_rows: int | None = None, chunk_rows: int | None = None):
    """Cluster ids for images against a saved clustering: scale, project, nearest centre.

    Parameters
    ----------
    images : (N, H, W[, C]) uint8 zarr / numpy / dask — corpus rows or new files read into
        an array; the same H×W×C as the images the PCA was fitted on
    pca : fitted :class:`cci_core.cluster.pca.PCA` (e.g. ``PCA.load(run / "pca")``)
    model : fitted estimator with ``predict`` on embeddings (e.g. ``MiniBatchKMeans.load``)
    n_rows : committed rows of a corpus array (all when None)

    Returns
    -------
    (N,) int32 numpy array of cluster ids; one parallel pass over the blocks.
    """
    from cci_core.cluster.features import image_features

    feats = image_features(images, n_rows, chunk_rows)
    if feats.shape[1] != pca.n_features_in_:
        raise ValueError(f"images have {feats.shape[1]} values each (H*W*C) but the PCA was "
                         f"fitted on {pca.n_features_in_}; resize them to the corpus's image size")
    if feats.shape[0] == 0:
        return np.zeros(0, np.int32)
    with threadpool_limits(1, user_api="blas"):
        labels = model.predict(pca.transform(feats))
        labels = labels.compute() if isinstance(labels, da.Array) else labels
    return np.asarray(labels, dtype=np.int32)
