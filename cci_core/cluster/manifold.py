"""UMAP embedding of feature rows (``--embedding umap``): fitted on a seeded sample, the
other rows transformed block by block (so the whole N×D never has to be in memory)."""
from __future__ import annotations

import dask.array as da
import numpy as np

from cci_core.cluster.cluster_metrics import sample_rows
from cci_core.common.threads import torch_threads_kept


def umap_embed(X, n_components: int = 10, n_neighbors: int = 20, min_dist: float = 0.0,
               sample_size: int = 20000, seed: int = 0, **params):
    """Embed the rows of X (N, D) with UMAP.

    UMAP is fitted on a seeded sample of ``sample_size`` rows (all rows when fewer);
    the rest are mapped with ``transform``, one task per block.

    Returns
    -------
    (embedding (N, n_components) float32 numpy, fitted ``umap.UMAP``, note: str saying
    what was fitted on what)
    """
    import umap  # slow import (numba); only when asked for

    n = X.shape[0]
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_rows, n_features), got shape {X.shape}")
    if n_neighbors < 2 or n_neighbors >= min(n, sample_size):
        raise ValueError(f"n_neighbors={n_neighbors} needs 2 <= n_neighbors < rows fitted "
                         f"({min(n, sample_size)})")
    if not 1 <= n_components < X.shape[1]:
        raise ValueError(f"n_components must be in [1, {X.shape[1]}), got {n_components}")
    rows = sample_rows(n, sample_size, seed)
    take = X[rows]
    S = np.asarray(take.compute() if isinstance(take, da.Array) else take, dtype=np.float32)
    if not np.isfinite(S).all():
        raise ValueError("X contains NaN or infinite values; clean the features first")
    reducer = umap.UMAP(n_components=n_components, n_neighbors=n_neighbors, min_dist=min_dist,
                        random_state=seed, **{"n_jobs": 1, **params})
    with torch_threads_kept():
        fitted = reducer.fit_transform(S).astype(np.float32)
    if len(rows) == n:
        return fitted, reducer, f"UMAP fitted on all {n} rows"
    out = np.empty((n, n_components), np.float32)
    out[rows] = fitted
    rest = np.setdiff1d(np.arange(n), rows)
    blocks = [rest[i:i + 16384] for i in range(0, rest.size, 16384)]
    # one block at a time: UMAP's transform is already parallel (numba threads)
    for idx in blocks:
        chunk = X[idx]
        chunk = np.asarray(chunk.compute() if isinstance(chunk, da.Array) else chunk, np.float32)
        with torch_threads_kept():
            out[idx] = reducer.transform(chunk)
    return out, reducer, (f"UMAP fitted on a seeded sample of {len(rows)} of {n} rows; "
                          f"the other rows mapped with its transform")
