"""PCA over tall Dask arrays (N×D, chunked along rows), saved without pickle.

Solvers
-------
``auto`` (default)
    ``cov`` up to ``AUTO_COV_MAX_D`` features (64x64 grey) or for a variance ratio, else
    ``randomized``; the solver used is ``solver_`` after fitting.
``cov``
    One pass: every block gives its row count, mean and centred scatter matrix (D×D); they
    are merged pairwise in a fixed tree (Chan et al.), then ``eigh``. Exact; best when D is
    up to a few thousand.
``randomized``
    Randomized subspace iteration on the covariance without ever forming it or any N×l
    intermediate: each pass computes ``Xcᵀ(Xc Q)`` block by block (D×l) for an orthonormal
    D×l basis Q, ``n_power_iter`` times, then a Rayleigh–Ritz step (Halko et al. 2011).
    About ``2·l/D`` of a ``cov`` pass per iteration.
``full``, ``tsqr``
    dask-ml's PCA with that ``svd_solver``. Its ``randomized`` crashes with scikit-learn 1.9
    and its ``auto`` picks a randomized SVD without power iterations here (components off
    by far on Fashion-MNIST), so neither is offered.

All solvers give components with a fixed sign (largest-magnitude entry positive).
"""
from __future__ import annotations

import os
from pathlib import Path

import dask
import dask.array as da
import numpy as np
from threadpoolctl import threadpool_limits

from cci_core.cluster.choices import AUTO_COV_MAX_D, SOLVERS
from cci_core.cluster.model_io import load_arrays, save_arrays


def _as_dask(X, chunk_rows: int = 16384) -> da.Array:
    if isinstance(X, da.Array):
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (n_rows, n_features), got shape {X.shape}")
        return X.rechunk({1: -1}) if X.numblocks[1] != 1 else X
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_rows, n_features), got shape {X.shape}")
    return da.from_array(X, chunks=(max(1, min(len(X), chunk_rows)), -1))


def _tree_reduce(parts: list, combine):
    """Combine delayed parts pairwise in a fixed order (the same on any number of workers)."""
    while len(parts) > 1:
        nxt = [dask.delayed(combine)(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        if len(parts) % 2:
            nxt.append(parts[-1])
        parts = nxt
    return parts[0]


# ----- cov solver: per-block moments merged with Chan's formula ------------------------


def _block_moments(x):
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[0]
    if n == 0:
        d = x.shape[1]
        return 0, np.zeros(d), np.zeros((d, d))
    mean = x.mean(axis=0, dtype=np.float64)
    xc = x - mean.astype(np.float32)
    return n, mean, (xc.T @ xc).astype(np.float64)


def _merge_moments(a, b):
    na, ma, sa = a
    nb, mb, sb = b
    if na == 0:
        return b
    if nb == 0:
        return a
    n = na + nb
    delta = mb - ma
    return n, ma + delta * (nb / n), sa + sb + np.outer(delta, delta) * (na * nb / n)


def _moments(X: da.Array):
    parts = [dask.delayed(_block_moments)(b) for b in X.to_delayed().ravel()]
    return dask.compute(_tree_reduce(parts, _merge_moments))[0]


# ----- randomized solver: subspace iteration, one pass per iteration -------------------


def _block_cov_times(x, mean, Q):
    xc = np.asarray(x, dtype=np.float32) - mean.astype(np.float32)
    return (xc.T @ (xc @ Q.astype(np.float32))).astype(np.float64)


def _cov_times(X: da.Array, mean: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """Xcᵀ (Xc Q) for centred X, summed over blocks in a fixed tree: shape (D, l)."""
    parts = [dask.delayed(_block_cov_times)(b, mean, Q) for b in X.to_delayed().ravel()]
    return dask.compute(_tree_reduce(parts, np.add))[0]


def _block_mean_sq(x):
    x = np.asarray(x, dtype=np.float64)
    return x.shape[0], x.sum(axis=0), (x * x).sum(axis=0)


def _fix_signs(components: np.ndarray) -> np.ndarray:
    idx = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(len(components)), idx])
    signs[signs == 0] = 1.0
    return components * signs[:, None]


class PCA:
    """Principal component analysis fitted on a numpy or Dask array.

    Parameters
    ----------
    n_components : int (number of components) or float in (0, 1) (smallest number whose
        explained variance ratio reaches it; needs a full-spectrum solver)
    solver : one of ``auto``, ``cov``, ``randomized``, ``full``, ``tsqr`` (see module doc)
    whiten : scale the projections to unit variance
    n_oversamples, n_power_iter : randomized solver only
    random_state : int seed (randomized solver)

    Attributes
    ----------
    components_ : (n_components, D) float64, rows orthonormal
    mean_ : (D,) float64
    explained_variance_ : (n_components,) float64
    explained_variance_ratio_ : (n_components,) float64
    total_variance_ : float, sum of the per-feature variances
    n_components_, n_samples_, n_features_in_ : int
    """

    def __init__(self, n_components: int | float = 50, solver: str = "auto", whiten: bool = False,
                 n_oversamples: int = 10, n_power_iter: int = 4, random_state: int = 0):
        self.n_components = n_components
        self.solver = solver
        self.whiten = whiten
        self.n_oversamples = n_oversamples
        self.n_power_iter = n_power_iter
        self.random_state = random_state

    def _check_params(self, n: int, d: int) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if n < 2:
            raise ValueError(f"PCA needs at least 2 rows (images), got {n}")
        nc = self.n_components
        if isinstance(nc, (float, np.floating)) and not float(nc).is_integer():
            if not 0.0 < nc < 1.0:
                raise ValueError(f"a float n_components is a variance ratio in (0, 1), got {nc}")
            if self.solver in ("randomized", "tsqr"):
                raise ValueError(f"n_components={nc} (a variance ratio) needs the full spectrum; "
                                 f"use solver='cov' or 'full', not {self.solver!r}")
        elif not (isinstance(nc, (int, np.integer, float)) and 1 <= int(nc) <= min(n, d)):
            raise ValueError(f"n_components must be an int in [1, min(n_rows, n_features)="
                             f"{min(n, d)}] or a float in (0, 1), got {nc!r}")
        if self.n_oversamples < 0 or self.n_power_iter < 0:
            raise ValueError(f"n_oversamples and n_power_iter must be >= 0, got "
                             f"{self.n_oversamples}, {self.n_power_iter}")

    def fit(self, X, y=None) -> "PCA":
        """Fit on X of shape (N, D), numpy or Dask, reading it block by block."""
        # Parallelism comes from the blocks; multi-threaded BLAS inside Dask threads
        # oversubscribes the cores (eigh of 784×784 took 8 s instead of 0.15 s here).
        with threadpool_limits(1, user_api="blas"):
            return self._fit(X)

    def _fit(self, X) -> "PCA":
        X = _as_dask(X)
        n, d = X.shape
        self._check_params(n, d)
        ratio = None
        if isinstance(self.n_components, float) and not float(self.n_components).is_integer():
            ratio = float(self.n_components)
        k = None if ratio is not None else int(self.n_components)
        solver = self.solver
        if solver == "auto":
            solver = "cov" if d <= AUTO_COV_MAX_D or ratio is not None else "randomized"
        self.solver_ = solver

        if solver == "cov":
            n_, mean, scatter = _moments(X)
            var, vecs = np.linalg.eigh(scatter / (n - 1))
            var, comps = var[::-1], vecs[:, ::-1].T
            total = float(np.trace(scatter) / (n - 1))
        elif solver == "randomized":
            parts = dask.compute(*[dask.delayed(_block_mean_sq)(b) for b in X.to_delayed().ravel()])
            s = sum(p[1] for p in parts)
            sq = sum(p[2] for p in parts)
            mean = s / n
            total = float((sq - n * mean ** 2).sum() / (n - 1))
            n_basis = min(d, k + self.n_oversamples)
            Q = np.random.default_rng(self.random_state).standard_normal((d, n_basis))
            Q, _ = np.linalg.qr(Q)
            for _ in range(self.n_power_iter):
                Q, _ = np.linalg.qr(_cov_times(X, mean, Q))
            H = Q.T @ _cov_times(X, mean, Q) / (n - 1)
            var, U = np.linalg.eigh((H + H.T) / 2)
            var, comps = var[::-1], (Q @ U[:, ::-1]).T
        else:
            from dask_ml.decomposition import PCA as DaskPCA
            model = DaskPCA(n_components=None if ratio is not None else k,
                            svd_solver=solver, random_state=self.random_state)
            model.fit(X.astype(np.float64))
            mean, comps = np.asarray(model.mean_), np.asarray(model.components_)
            var = np.asarray(model.explained_variance_)
            total = float(var.sum() / model.explained_variance_ratio_.sum()) if var.sum() > 0 else 0.0

        if not total > 1e-12 or not np.isfinite(total):
            raise ValueError("the features have zero variance (all images identical or constant); "
                             "nothing to project or cluster")
        var = np.maximum(var, 0.0)
        if ratio is not None:
            k = int(np.searchsorted(np.cumsum(var) / total, ratio - 1e-12) + 1)
            k = min(k, len(var))
        self.components_ = _fix_signs(comps[:k])
        self.explained_variance_ = var[:k]
        self.explained_variance_ratio_ = var[:k] / total
        self.mean_ = np.asarray(mean, dtype=np.float64)
        self.total_variance_ = total
        self.n_components_, self.n_samples_, self.n_features_in_ = k, n, d
        return self

    # ----- projection ------------------------------------------------------------------

    def _fitted(self):
        if not hasattr(self, "components_"):
            raise ValueError("this PCA is not fitted yet; call fit or load first")

    def _scale(self) -> np.ndarray:
        if not self.whiten:
            return np.ones(self.n_components_)
        floor = 1e-12 * max(float(self.explained_variance_.max()), 1e-300)
        return 1.0 / np.sqrt(np.maximum(self.explained_variance_, floor))

    def _project(self, x: np.ndarray) -> np.ndarray:
        # One memory layout whatever produced components_ (eigh gives Fortran order, a loaded
        # model C order): BLAS picks its kernel by layout, and kernels round differently.
        w = np.ascontiguousarray(self.components_.T * self._scale()[None, :])
        bias = (self.mean_ @ w).astype(np.float32)  # (x - mean) @ w without an N×D copy
        return np.asarray(x, dtype=np.float32) @ w.astype(np.float32) - bias

    def transform(self, X):
        """Project X (N, D) to (N, n_components) float32; lazy for a Dask array."""
        self._fitted()
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X must have shape (n, {self.n_features_in_}), got {X.shape}")
        if isinstance(X, da.Array):
            X = X.rechunk({1: -1}) if X.numblocks[1] != 1 else X
            return X.map_blocks(self._project, chunks=(X.chunks[0], (self.n_components_,)),
                                dtype=np.float32)
        return self._project(X)

    def fit_transform(self, X, y=None):
        return self.fit(X).transform(X)

    def inverse_transform(self, Z):
        """Map projections (n, n_components) back to feature space (n, D), numpy."""
        self._fitted()
        Z = np.asarray(Z, dtype=np.float64) / self._scale()[None, :]
        return Z @ self.components_ + self.mean_

    # ----- persistence (no pickle) -----------------------------------------------------

    def save(self, directory: str | os.PathLike, name: str = "pca") -> Path:
        """Write ``<name>.safetensors`` (arrays) and ``<name>.json`` (parameters)."""
        self._fitted()
        meta = {"params": {"n_components": self.n_components, "solver": self.solver,
                           "whiten": self.whiten, "n_oversamples": self.n_oversamples,
                           "n_power_iter": self.n_power_iter, "random_state": self.random_state},
                "solver_used": getattr(self, "solver_", self.solver),
                "n_components_": self.n_components_, "n_samples": self.n_samples_,
                "n_features_in": self.n_features_in_, "total_variance": self.total_variance_,
                "explained_variance_ratio": [float(r) for r in self.explained_variance_ratio_]}
        return save_arrays(directory, name, {"components": self.components_, "mean": self.mean_,
                                             "explained_variance": self.explained_variance_}, meta)

    @classmethod
    def load(cls, directory: str | os.PathLike, name: str = "pca") -> "PCA":
        arrays, meta = load_arrays(directory, name, "PCA")
        model = cls(**meta["params"])
        model.components_ = arrays["components"]
        model.mean_ = arrays["mean"]
        model.explained_variance_ = arrays["explained_variance"]
        model.total_variance_ = meta["total_variance"]
        model.explained_variance_ratio_ = model.explained_variance_ / model.total_variance_
        model.n_components_ = meta["n_components_"]
        model.n_samples_ = meta["n_samples"]
        model.n_features_in_ = meta["n_features_in"]
        return model


def fit_pca(X, n_components: int | float = 50, solver: str = "auto", whiten: bool = False,
            random_state: int = 0, **params) -> PCA:
    """Convenience: ``PCA(...).fit(X)``."""
    return PCA(n_components, solver=solver, whiten=whiten, random_state=random_state,
               **params).fit(X)
