"""Choose the number of clusters: score each k (inertia elbow, sampled silhouette), pick one."""
from __future__ import annotations

import dask.array as da
import numpy as np
import sklearn
from sklearn.metrics import silhouette_score
from threadpoolctl import threadpool_limits

from cci_core.cluster.choices import parse_k_range
from cci_core.cluster.cluster_metrics import SILHOUETTE_WORKING_MB, sample_rows
from cci_core.cluster.kmeans import MiniBatchKMeans, _take_rows

CRITERIA = ("silhouette", "elbow")


def elbow(ks, inertias) -> int:
    """The k farthest below the straight line from the first to the last (k, inertia)."""
    ks, y = np.asarray(ks, dtype=float), np.asarray(inertias, dtype=float)
    if len(ks) < 3:
        return int(ks[0])
    x = (ks - ks[0]) / (ks[-1] - ks[0])
    span = y[0] - y[-1]
    yn = (y - y[-1]) / span if span > 0 else np.zeros_like(y)
    gap = (1.0 - x) - yn  # chord from (0, 1) to (1, 0) minus the curve
    return int(ks[int(np.argmax(gap))])


def choose_k(X, ks, sample_size: int = 20000, silhouette_size: int = 5000, seed: int = 0,
             criterion: str = "silhouette", **kmeans_params) -> dict:
    """Fit k-means for each k on a seeded sample of X and score it.

    Parameters
    ----------
    X : (N, D) numpy or Dask array
    ks : iterable of k (>= 2), or a string for :func:`parse_k_range`
    sample_size : rows the k-means fits see
    silhouette_size : rows (of that sample) the silhouette is computed on
    criterion : ``silhouette`` (highest wins) or ``elbow`` (of the inertia curve)

    Returns
    -------
    dict: ``k`` (chosen), ``criterion``, ``elbow_k``, ``silhouette_k``, ``sample_size``,
    ``silhouette_sample_size`` and ``scores``, a list of ``{k, inertia, silhouette}``
    (inertia over the fitted sample).
    """
    ks = parse_k_range(ks) if isinstance(ks, str) else sorted(int(k) for k in ks)
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if not ks or min(ks) < 2:
        raise ValueError(f"every k must be >= 2, got {ks}")
    n = X.shape[0]
    if max(ks) > n:
        raise ValueError(f"k={max(ks)} is more than the {n} rows; use k <= {n}")
    rows = sample_rows(n, sample_size, seed)
    # bounded distance slices, as in cluster_metrics.silhouette (same scores)
    with threadpool_limits(1, user_api="blas"), sklearn.config_context(working_memory=SILHOUETTE_WORKING_MB):
        S = _take_rows(X, rows) if isinstance(X, da.Array) else np.asarray(X, np.float64)[rows]
        sil_rows = sample_rows(len(S), silhouette_size, seed + 1)
        scores = []
        for k in ks:
            model = MiniBatchKMeans(k, random_state=seed, **kmeans_params).fit(S)
            lab = model.labels_[sil_rows]
            sil = (float(silhouette_score(S[sil_rows], lab))
                   if 2 <= np.unique(lab).size < len(sil_rows) else None)
            scores.append({"k": k, "inertia": float(model.inertia_), "silhouette": sil})
    elbow_k = elbow(ks, [s["inertia"] for s in scores])
    valid = [s for s in scores if s["silhouette"] is not None]
    sil_k = max(valid, key=lambda s: s["silhouette"])["k"] if valid else None
    if criterion == "silhouette" and sil_k is not None:
        chosen, used = sil_k, "silhouette"
    else:  # also when no k had a defined silhouette
        chosen, used = elbow_k, "elbow"
    return {"k": int(chosen), "criterion": used,
            "elbow_k": elbow_k, "silhouette_k": sil_k, "sample_size": int(len(S)),
            "silhouette_sample_size": int(len(sil_rows)), "scores": scores}
