"""The fitted clustering model of a run, in ``<run>/clustering/`` without pickle, and read back.

k-means keeps its own files (``kmeans.safetensors`` + ``kmeans.json``); GMM and the other
algorithms keep ``model.safetensors`` (centres; GMM parameters) + ``model.json``. Every run also
keeps ``reference.safetensors``: a seeded sample of labelled PCA rows that nearest-neighbour
prediction votes with.
"""
from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
from sklearn.mixture import GaussianMixture

from cci_core.cluster.cluster_metrics import sample_rows
from cci_core.cluster.kmeans import MiniBatchKMeans
from cci_core.cluster.model_io import load_arrays, load_numpy_tensors, save_arrays, save_numpy_tensors
from cci_core.store import fs

REFERENCE_ROWS = 50000  # labelled rows kept for nearest-neighbour prediction


def save_model(result, directory: Path) -> list[Path]:
    """The fitted model of a :class:`~cci_core.cluster.clusterers.ClusterResult`: k-means centres,
    GMM parameters, or centroids. Returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    if result.algorithm == "kmeans":
        path = result.model.save(directory)
        return [path, path.with_suffix(".json")]
    arrays = {"centers": np.ascontiguousarray(result.centers, dtype=np.float64)}
    if result.algorithm == "gmm":
        g = result.model
        arrays.update(weights=g.weights_, means=g.means_, covariances=g.covariances_,
                      precisions_cholesky=g.precisions_cholesky_)
        arrays = {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}
    meta = {"algorithm": result.algorithm, "covariance_type": getattr(result.model, "covariance_type", None)}
    path = save_arrays(directory, "model", arrays, meta, indent=None)
    return [path, path.with_suffix(".json")]


def save_reference(embeddings: da.Array, labels: np.ndarray, directory: Path, seed: int) -> Path:
    """A seeded sample of the labelled PCA rows (``embeddings``: the run's PCA projections)."""
    rows = sample_rows(labels.size, REFERENCE_ROWS, seed)
    X = np.asarray(embeddings[rows].compute(), dtype=np.float32)
    return save_numpy_tensors(directory / "reference.safetensors", {
        "embeddings": np.ascontiguousarray(X), "labels": labels[rows].astype(np.int32), "rows": rows.astype(np.int64)})


def load_centers(directory: Path, algorithm: str) -> np.ndarray:
    """(k, D) centres of a kmeans or agglomerative model."""
    if algorithm == "kmeans":
        return MiniBatchKMeans.load(directory).cluster_centers_
    return load_arrays(directory, "model", "clustering model")[0]["centers"]


def load_gmm(directory: Path) -> GaussianMixture:
    """The fitted Gaussian mixture of a gmm run, ready for ``predict_proba``."""
    arrays, meta = load_arrays(directory, "model", "clustering model")
    gmm = GaussianMixture(len(arrays["weights"]), covariance_type=meta["covariance_type"])
    gmm.weights_, gmm.means_ = arrays["weights"], arrays["means"]
    gmm.covariances_, gmm.precisions_cholesky_ = arrays["covariances"], arrays["precisions_cholesky"]
    return gmm


def load_reference(directory: Path) -> dict[str, np.ndarray]:
    """``embeddings`` (n, D) float32, ``labels`` (n,) int32 and ``rows`` of :func:`save_reference`."""
    return load_numpy_tensors(fs.as_path(directory) / "reference.safetensors")
