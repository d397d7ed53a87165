"""Mini-batch k-means (Sculley 2010) over numpy or Dask arrays.

How it runs on a Dask array of shape (N, D), chunked along rows:

* Every random draw comes from a stream keyed by ``(random_state, purpose, step)``;
  mini-batch rows are global row indices, sorted. Each block task hands back the sampled
  rows that fall inside it (one task per block per *round* of many steps), and the rows
  are concatenated in block order, which is the sorted global order. The mini-batches are
  therefore the same bytes whatever the chunking or the number of workers, so the same
  seed gives the same centres and partitions on 1 or 100 workers.
* A Dask X of at most 64 MiB (as float64) is fetched once instead; same rows, same result.
* The per-step update (assign the batch, per-centre sums and counts, per-centre learning
  rate ``1 / count``) is tiny and runs where ``fit`` was called: a distributed round trip
  per step costs more than the step itself.
* ``n_init`` runs share the mini-batches and differ in their k-means++ start; after
  ``init_trial_steps`` steps only the one with the lowest inertia on the init sample goes on.
* The final assignment (``labels_``, ``inertia_``) is one parallel pass over all blocks,
  with per-block inertia summed in block order.
"""
from __future__ import annotations

import os
from pathlib import Path

import dask
import dask.array as da
import numpy as np
from sklearn.cluster import kmeans_plusplus
from threadpoolctl import threadpool_limits

from cci_core.cluster.cluster_metrics import group_sums
from cci_core.cluster.model_io import load_arrays, save_arrays

# Stream ids for the seeded random draws (never derived from worker identity).
_BATCH, _INIT_SAMPLE, _INIT, _REASSIGN = 1, 2, 3, 4
_ROUND_BYTES = 16 * 2**20  # sampled rows fetched per round (as float32), in bytes
_LOCAL_BYTES = 64 * 2**20  # a Dask X up to this size (as float64) is fetched whole


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def _as_2d(X):
    """Validate X and return it as a numpy or dask array of shape (N, D)."""
    if isinstance(X, da.Array):
        if X.ndim != 2:
            X = X.reshape(X.shape[0], -1)
        return X.rechunk({1: -1}) if X.numblocks[1] != 1 else X
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_rows, n_features), got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.floating):
        X = X.astype(np.float32)
    return X


def _take_rows(X, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (global indices) of X as float64, fetched block by block."""
    if not isinstance(X, da.Array):
        return np.asarray(X[rows], dtype=np.float64)
    if rows.size > 1 and (np.diff(rows) < 0).any():
        order = np.argsort(rows, kind="stable")
        out = np.empty((rows.size, X.shape[1]))
        out[order] = _take_rows(X, rows[order])
        return out
    bounds = np.cumsum((0,) + X.chunks[0])
    cuts = np.searchsorted(rows, bounds)
    parts = []
    for b, block in enumerate(X.to_delayed().ravel()):
        local = rows[cuts[b]:cuts[b + 1]] - bounds[b]
        if local.size:
            parts.append(dask.delayed(lambda x, i: np.asarray(x[i]))(block, local))
    # shipped in the array's own dtype (half the bytes for float32), widened here
    return np.concatenate([np.asarray(p, dtype=np.float64) for p in dask.compute(*parts)], axis=0)


def _sq_dist(X: np.ndarray, centers: np.ndarray, c_sq: np.ndarray | None = None) -> np.ndarray:
    """Squared Euclidean distances, shape (n, k), clipped at 0."""
    c_sq = (centers ** 2).sum(1) if c_sq is None else c_sq
    d = (X ** 2).sum(1)[:, None] - 2.0 * (X @ centers.T) + c_sq[None, :]
    return np.maximum(d, 0.0)


def _assign_block(x, centers: np.ndarray):
    """Labels (n,) int32 and exact squared distance to the assigned centre (n,)."""
    x = np.asarray(x)
    c = centers.astype(x.dtype if x.dtype in (np.float32, np.float64) else np.float64)
    lab = np.argmin(_sq_dist(x, c), axis=1).astype(np.int32)
    diff = np.asarray(x, dtype=np.float64) - centers[lab]
    return lab, np.einsum("ij,ij->i", diff, diff)


def _assign_block_total(x, centers: np.ndarray):
    """One block's labels and its summed squared distance (a named task in the Dask graph)."""
    labels, d2 = _assign_block(x, centers)
    return labels, d2.sum()


class MiniBatchKMeans:
    """Mini-batch k-means with k-means++ starts, deterministic for a seed.

    Parameters
    ----------
    n_clusters : int >= 2
    batch_size : rows per mini-batch step
    max_iter : maximum number of mini-batch steps per start
    n_init : number of k-means++ starts; all share the mini-batches for ``init_trial_steps``
        steps, then only the one with the lowest inertia on the init sample goes on
    init_trial_steps : steps every start runs before the cut (None: run every start to the
        end and keep the best)
    tol : stop when the mean squared centre shift per step, relative to the mean feature
        variance, falls to ``tol`` or below (0 disables)
    max_no_improvement : stop after this many steps without a better smoothed batch
        inertia (None disables)
    reassignment_ratio : every 10 steps, centres whose count is below this fraction of
        the largest count are moved onto far-away batch rows
    init_size : rows sampled for k-means++ and for choosing between starts
        (default ``max(3 * batch_size, 10 * n_clusters)``)
    random_state : int seed
    compute_labels : compute ``labels_`` and ``inertia_`` with a full pass at the end of ``fit``

    Attributes
    ----------
    cluster_centers_ : (k, D) float64
    counts_ : (k,) rows each centre has absorbed during fitting
    labels_ : (N,) int32 (when ``compute_labels``)
    inertia_ : float, sum of squared distances to the nearest centre over all N rows
    n_iter_ : mini-batch steps taken by the chosen start
    n_steps_ : steps taken by every start (list)
    """

    def __init__(self, n_clusters: int = 8, batch_size: int = 1024, max_iter: int = 300,
                 n_init: int = 3, tol: float = 0.0, max_no_improvement: int | None = 20,
                 reassignment_ratio: float = 0.01, init_size: int | None = None,
                 init_trial_steps: int | None = 50, random_state: int = 0,
                 compute_labels: bool = True):
        self.n_clusters = n_clusters
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.n_init = n_init
        self.tol = tol
        self.max_no_improvement = max_no_improvement
        self.reassignment_ratio = reassignment_ratio
        self.init_size = init_size
        self.init_trial_steps = init_trial_steps
        self.random_state = random_state
        self.compute_labels = compute_labels
        self._check_params()

    # ----- validation ----------------------------------------------------------------

    def _check_params(self) -> None:
        def need(cond, msg):
            if not cond:
                raise ValueError(msg)
        need(isinstance(self.n_clusters, (int, np.integer)) and self.n_clusters >= 2,
             f"n_clusters must be an integer >= 2, got {self.n_clusters!r}")
        need(int(self.batch_size) >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(int(self.max_iter) >= 1, f"max_iter must be >= 1, got {self.max_iter}")
        need(int(self.n_init) >= 1, f"n_init must be >= 1, got {self.n_init}")
        need(self.tol >= 0, f"tol must be >= 0, got {self.tol}")
        need(self.max_no_improvement is None or self.max_no_improvement >= 1,
             f"max_no_improvement must be >= 1 or None, got {self.max_no_improvement}")
        need(0 <= self.reassignment_ratio < 1,
             f"reassignment_ratio must be in [0, 1), got {self.reassignment_ratio}")
        need(self.init_trial_steps is None or self.init_trial_steps >= 1,
             f"init_trial_steps must be >= 1 or None, got {self.init_trial_steps}")
        need(self.init_size is None or self.init_size >= self.n_clusters,
             f"init_size must be >= n_clusters ({self.n_clusters}), got {self.init_size}")

    def _check_X(self, X):
        X = _as_2d(X)
        n = X.shape[0]
        if n < self.n_clusters:
            raise ValueError(f"n_clusters={self.n_clusters} is more than the {n} rows of X; "
                             f"use k <= {n}")
        if hasattr(self, "cluster_centers_") and X.shape[1] != self.cluster_centers_.shape[1]:
            raise ValueError(f"X has {X.shape[1]} features but the model was fitted on "
                             f"{self.cluster_centers_.shape[1]}")
        return X

    @staticmethod
    def _check_finite(sample: np.ndarray) -> None:
        if not np.isfinite(sample).all():
            raise ValueError("X contains NaN or infinite values; clean the features first")

    # ----- fitting -------------------------------------------------------------------

    def _init_centers(self, sample: np.ndarray, start: int) -> np.ndarray:
        seed = int(_rng(self.random_state, _INIT, start).integers(2**31 - 1))
        centers, _ = kmeans_plusplus(sample, self.n_clusters, random_state=seed)
        return centers.astype(np.float64)

    def _step(self, state: dict, batch: np.ndarray, step: int, start: int,
              batch_sq: np.ndarray | None = None) -> None:
        """One Sculley update of ``state`` (centers, counts, ewa, ...) in place."""
        k = self.n_clusters
        centers, counts = state["centers"], state["counts"]
        rows = np.arange(len(batch))
        batch_sq = (batch * batch).sum(1) if batch_sq is None else batch_sq
        d2 = (centers * centers).sum(1)[None, :] - 2.0 * (batch @ centers.T)
        lab = np.argmin(d2, axis=1)
        near = np.maximum(d2[rows, lab] + batch_sq, 0.0)
        cnt = np.bincount(lab, minlength=k).astype(np.float64)
        if k * len(batch) <= 2**18:  # one-hot product: fastest for small k
            onehot = np.zeros((k, len(batch)))
            onehot[lab, rows] = 1.0
            sums = onehot @ batch
        else:
            sums = group_sums(batch, lab, k)
        new_counts = counts + cnt
        hit = cnt > 0
        new = centers.copy()
        # Per-centre learning rate 1/count, applied to the whole batch at once.
        new[hit] = (centers[hit] * counts[hit, None] + sums[hit]) / new_counts[hit, None]
        if self.reassignment_ratio > 0 and (step + 1) % 10 == 0:
            tiny = np.flatnonzero(new_counts < self.reassignment_ratio * new_counts.max())
            tiny = tiny[:len(batch)]  # at most one batch row per centre
            if tiny.size:
                rng = _rng(self.random_state, _REASSIGN, start, step)
                # far-away rows are likelier picks (as in k-means++)
                p = near / near.sum() if np.count_nonzero(near) >= tiny.size else None
                pick = rng.choice(len(batch), size=tiny.size, replace=False, p=p)
                new[tiny] = batch[pick]
                rest = np.setdiff1d(np.arange(k), tiny)
                new_counts[tiny] = new_counts[rest].min() if rest.size else 1.0
        shift = float(((new - centers) ** 2).sum() / k)
        state["centers"], state["counts"] = new, new_counts
        state["n_iter"] = step + 1
        # Smoothed (exponentially weighted) mean batch inertia, as in scikit-learn.
        batch_inertia = float(near.mean())
        alpha = min(1.0, 2.0 * len(batch) / (state["n_rows"] + 1))
        ewa = batch_inertia if state["ewa"] is None else state["ewa"] * (1 - alpha) + batch_inertia * alpha
        state["ewa"] = ewa
        if self.tol > 0 and step > 0 and shift <= self.tol * state["variance"]:
            state["done"] = True
        if ewa < state["best_ewa"]:
            state["best_ewa"], state["no_improve"] = ewa, 0
        else:
            state["no_improve"] += 1
            if self.max_no_improvement is not None and state["no_improve"] >= self.max_no_improvement:
                state["done"] = True

    def fit(self, X, y=None) -> "MiniBatchKMeans":
        """Fit on X, a numpy or dask array of shape (N, D).

        The fitted model does not depend on how X is chunked or on how many Dask workers run.
        """
        # Parallelism comes from the blocks; multi-threaded BLAS on top oversubscribes.
        with threadpool_limits(1, user_api="blas"):
            return self._fit(X)

    def _fit(self, X) -> "MiniBatchKMeans":
        self._check_params()
        for attr in ("cluster_centers_", "counts_", "labels_", "inertia_"):
            self.__dict__.pop(attr, None)
        X = self._check_X(X)
        n, d = X.shape
        full = X
        if isinstance(X, da.Array) and n * d * 8 <= _LOCAL_BYTES:
            # Small enough: one fetch of every row beats shipping sampled rows round by round
            # (the batches are the same rows either way, so the result is too).
            X = np.asarray(X.compute(), dtype=np.float64)
        k, b = self.n_clusters, min(int(self.batch_size), n)
        init_size = min(n, self.init_size or max(3 * b, 10 * k))
        init_rows = np.sort(_rng(self.random_state, _INIT_SAMPLE).choice(n, init_size, replace=False))
        # rounds save round trips to Dask blocks; rows already in memory are taken step by step
        # (the same batches, without a round's copy of up to _ROUND_BYTES as float64)
        steps_per_round = (max(1, min(self.max_iter, _ROUND_BYTES // (4 * b * d))) if isinstance(X, da.Array)
                           else 1)

        def draw(step):
            return np.sort(_rng(self.random_state, _BATCH, step).integers(0, n, size=b))

        # Round 0 fetches the init sample together with the first batches.
        first = [draw(s) for s in range(steps_per_round)]
        fetched = _take_rows(X, np.concatenate([init_rows] + first)) if isinstance(X, da.Array) else None
        if fetched is None:
            sample = np.asarray(X[init_rows], dtype=np.float64)
        else:
            sample, fetched = fetched[:init_size], fetched[init_size:]
        self._check_finite(sample)
        if np.unique(sample, axis=0).shape[0] < k:
            distinct = np.unique(sample, axis=0).shape[0]
            raise ValueError(f"X has only {distinct} distinct rows in a sample of {init_size}, "
                             f"fewer than n_clusters={k} (constant or duplicate data?); use a "
                             f"smaller k or check the features")
        variance = float(sample.var(axis=0).mean())
        states = [dict(centers=self._init_centers(sample, s), counts=np.zeros(k), ewa=None,
                       best_ewa=np.inf, no_improve=0, done=False, n_iter=0, n_rows=n,
                       variance=variance) for s in range(self.n_init)]

        step, cut = 0, None
        while step < self.max_iter and not all(s["done"] for s in states):
            todo = list(range(step, min(self.max_iter, step + steps_per_round)))
            rows = first if step == 0 else [draw(s) for s in todo]
            if step == 0 and fetched is not None:
                data = fetched
            else:
                data = _take_rows(X, np.concatenate(rows))
            self._check_finite(data)
            for i, s_ in enumerate(todo):
                batch = data[i * b:(i + 1) * b]
                batch_sq = (batch * batch).sum(1)
                for start, state in enumerate(states):
                    if not state["done"]:
                        self._step(state, batch, s_, start, batch_sq)
                if s_ + 1 == self.init_trial_steps and len(states) > 1:
                    # successive halving, in one cut: only the best start goes on
                    trial = [_sq_dist(sample, st["centers"]).min(axis=1).sum() for st in states]
                    cut = int(np.argmin(trial))
                    for j, st in enumerate(states):
                        st["done"] = st["done"] or j != cut
            step = todo[-1] + 1

        held = [float(_sq_dist(sample, s["centers"]).min(axis=1).sum()) for s in states]
        best = cut if cut is not None else int(np.argmin(held))
        self.cluster_centers_ = states[best]["centers"]
        self.counts_ = states[best]["counts"]
        self.n_iter_ = states[best]["n_iter"]
        self.n_steps_ = [s["n_iter"] for s in states]
        self.init_sample_inertia_ = held
        self.n_features_in_ = d
        if self.compute_labels:
            self.labels_, self.inertia_ = self._assign(full)
            self._check_finite(np.array([self.inertia_]))
        return self

    def partial_fit(self, X, y=None) -> "MiniBatchKMeans":
        """One mini-batch update with the rows of X (numpy, (n, D)); starts the model if new."""
        X = np.asarray(_as_2d(X) if not isinstance(X, da.Array) else X.compute(), dtype=np.float64)
        self._check_finite(X)
        if not hasattr(self, "cluster_centers_"):
            self._check_params()
            if len(X) < self.n_clusters:
                raise ValueError(f"the first partial_fit batch needs at least n_clusters="
                                 f"{self.n_clusters} rows, got {len(X)}")
            self.cluster_centers_ = self._init_centers(X, 0)
            self.counts_ = np.zeros(self.n_clusters)
            self.n_iter_ = 0
            self._partial = dict(ewa=None, best_ewa=np.inf, no_improve=0,
                                 variance=float(X.var(axis=0).mean()), n_rows=len(X))
            self.n_features_in_ = X.shape[1]
        elif X.shape[1] != self.cluster_centers_.shape[1]:
            raise ValueError(f"X has {X.shape[1]} features but the model has "
                             f"{self.cluster_centers_.shape[1]}")
        state = dict(self._partial, centers=self.cluster_centers_, counts=self.counts_,
                     done=False, n_iter=self.n_iter_)
        state["n_rows"] += len(X)
        self._step(state, X, self.n_iter_, 0)
        self.cluster_centers_, self.counts_, self.n_iter_ = state["centers"], state["counts"], state["n_iter"]
        self._partial = {key: state[key] for key in ("ewa", "best_ewa", "no_improve", "variance", "n_rows")}
        return self

    # ----- using a fitted model --------------------------------------------------------

    def _fitted(self) -> np.ndarray:
        if not hasattr(self, "cluster_centers_"):
            raise ValueError("this MiniBatchKMeans is not fitted yet; call fit or load first")
        return self.cluster_centers_

    def _assign(self, X):
        """One parallel pass: labels (N,) int32 and total inertia (summed in block order)."""
        with threadpool_limits(1, user_api="blas"):
            return self._assign_pass(X)

    def _assign_pass(self, X):
        centers = self._fitted()
        if not isinstance(X, da.Array):
            lab, d2 = _assign_block(X, centers)
            return lab, float(d2.sum())
        parts = dask.compute(*[dask.delayed(_assign_block_total)(blk, centers) for blk in X.to_delayed().ravel()])
        return np.concatenate([p[0] for p in parts]), float(sum(p[1] for p in parts))

    def predict(self, X):
        """Nearest-centre ids: numpy (n,) int32 for numpy X, a lazy dask array for dask X."""
        centers = self._fitted()
        X = self._check_X_predict(X)
        if isinstance(X, da.Array):
            return X.map_blocks(lambda x: _assign_block(x, centers)[0], drop_axis=1, dtype=np.int32)
        return _assign_block(X, centers)[0]

    def transform(self, X):
        """Euclidean distances to every centre, shape (n, k); lazy for dask X."""
        centers = self._fitted()
        X = self._check_X_predict(X)
        f = lambda x: np.sqrt(_sq_dist(np.asarray(x, dtype=np.float64), centers))  # noqa: E731
        if isinstance(X, da.Array):
            return X.map_blocks(f, chunks=(X.chunks[0], (len(centers),)), dtype=np.float64)
        return f(X)

    def score(self, X, y=None) -> float:
        """Opposite of the inertia of X against the fitted centres (higher is better)."""
        return -self._assign(self._check_X_predict(X))[1]

    def _check_X_predict(self, X):
        self._fitted()
        X = _as_2d(X)
        if X.shape[1] != self.cluster_centers_.shape[1]:
            raise ValueError(f"X has {X.shape[1]} features but the model was fitted on "
                             f"{self.cluster_centers_.shape[1]}")
        return X

    # ----- persistence (no pickle) -----------------------------------------------------

    _PARAMS = ("n_clusters", "batch_size", "max_iter", "n_init", "tol", "max_no_improvement",
               "reassignment_ratio", "init_size", "init_trial_steps", "random_state",
               "compute_labels")

    def save(self, directory: str | os.PathLike, name: str = "kmeans") -> Path:
        """Write ``<name>.safetensors`` (centres, counts) and ``<name>.json`` (params)."""
        centers = self._fitted()
        meta = {"params": {p: getattr(self, p) for p in self._PARAMS},
                "n_iter": int(self.n_iter_), "n_features_in": int(centers.shape[1]),
                "inertia": getattr(self, "inertia_", None)}
        return save_arrays(directory, name, {"cluster_centers": centers, "counts": self.counts_}, meta)

    @classmethod
    def load(cls, directory: str | os.PathLike, name: str = "kmeans") -> "MiniBatchKMeans":
        arrays, meta = load_arrays(directory, name, "k-means")
        model = cls(**meta["params"])
        model.cluster_centers_ = arrays["cluster_centers"]
        model.counts_ = arrays["counts"]
        model.n_iter_ = meta["n_iter"]
        model.n_features_in_ = meta["n_features_in"]
        if meta.get("inertia") is not None:
            model.inertia_ = meta["inertia"]
        return model
