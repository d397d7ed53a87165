"""Label new images against a finished run: corpus rows or files read into an array, or a source.

Prediction sits above the stages it serves: a clustering run labels with its PCA and model
(:mod:`cci_core.cluster.clustering_model`), a refined run with its CNN classifier
(:mod:`cci_core.refine`); the assignment itself is :mod:`cci_core.predict.assign`. The modules
that import torch are imported where they are used, so importing this one stays light.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits

from cci_core.cluster.clustering_model import load_centers, load_gmm, load_reference
from cci_core.cluster.features import image_features
from cci_core.cluster.pca import PCA
from cci_core.cluster.records import ClusterParams
from cci_core.common.finite import check_values
from cci_core.store import runs
from cci_core.store.store import Store


def load_predictor(store: Store, run_id: str):
    """A function ``images (N, H, W, C) uint8 -> (labels, confidence)`` for a finished run.

    A refined run (``cci refine``) labels with its CNN classifier (confidence = top softmax).
    kmeans / agglomerative on PCA: nearest centre (confidence = 1 - d1/d2); gmm on PCA: the
    Gaussian mixture's posterior; anything on UMAP and the density algorithms: a 15-nearest-
    neighbour vote among the run's labelled PCA rows (confidence = vote share; -1 = noise).
    """
    run = runs.finished_run(store, run_id)
    if run.get("classifier"):
        return _classifier_predictor(run)
    rdir = store.run_dir(run_id)
    if not (rdir / "pca" / "pca.safetensors").exists():
        raise ValueError(f"run {run_id!r} keeps neither a PCA nor a classifier to label new images with "
                         f"(it was made by {run.get('kind', 'another step')}); predict with the run it came from, "
                         f"or refine it first: `cci refine {run_id}`")
    p = ClusterParams(**run["params"])
    pca = PCA.load(rdir / "pca")
    cdir = rdir / "clustering"
    if p.embedding == "pca" and p.algorithm in ("kmeans", "agglomerative"):
        centers = load_centers(cdir, p.algorithm)
        method = "nearest centre"
    elif p.embedding == "pca" and p.algorithm == "gmm":
        gmm = load_gmm(cdir)
        method = "gmm posterior"
    else:
        ref = load_reference(cdir)
        knn = KNeighborsClassifier(n_neighbors=min(15, len(ref["labels"]))).fit(ref["embeddings"], ref["labels"])
        method = "nearest-neighbour vote"

    def predict(images) -> tuple[np.ndarray, np.ndarray]:
        images = _check_shape(images, run)
        if len(images) == 0:
            return np.zeros(0, np.int32), np.zeros(0, np.float32)
        with threadpool_limits(1, user_api="blas"):
            Z = np.asarray(pca.transform(image_features(images).compute()), dtype=np.float64)
            if method == "nearest centre":
                from cci_core.predict.assign import assign_centroids
                return assign_centroids(Z, centers)
            if method == "gmm posterior":
                post = gmm.predict_proba(Z)
                return post.argmax(1).astype(np.int32), post.max(1).astype(np.float32)
            prob = knn.predict_proba(Z.astype(np.float32))
            return knn.classes_[prob.argmax(1)].astype(np.int32), prob.max(1).astype(np.float32)

    predict.method = method
    predict.model = rdir / "pca" / "pca.safetensors"
    return predict


def _check_shape(images: np.ndarray, run: dict) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if tuple(images.shape[1:]) != tuple(run["shape"]):
        raise ValueError(f"images are {'x'.join(map(str, images.shape[1:]))} but run {run['run_id']!r} "
                         f"clustered {'x'.join(map(str, run['shape']))} images; resize them first")
    return images


def _classifier_predictor(run: dict):
    from cci_core.predict.assign import assign_classifier
    from cci_core.refine.classifier import load_classifier
    model = load_classifier(run["classifier"])

    def predict(images) -> tuple[np.ndarray, np.ndarray]:
        images = _check_shape(images, run)
        if len(images) == 0:
            return np.zeros(0, np.int32), np.zeros(0, np.float32)
        return assign_classifier(model, images)
    predict.method = "cci classifier"
    predict.model = f"{run['classifier']}/classifier.safetensors"
    return predict


def predict(store: Store, run_id: str, images, batch_size: int = 16384) -> pd.DataFrame:
    """Cluster ids and confidences for images against a finished run, in batches.

    images : (N, H, W[, C]) uint8 array-like (numpy, zarr) with the run's image shape
    Returns a DataFrame with ``cluster`` and ``confidence`` per row, in input order.
    """
    fn = load_predictor(store, run_id)
    labels, conf = [], []
    for start in range(0, len(images), batch_size):
        lab, c = fn(np.asarray(images[start:start + batch_size]))
        check_values(c, "confidences", fn.model)
        labels.append(lab)
        conf.append(c)
    if not labels:
        return pd.DataFrame({"cluster": np.zeros(0, np.int32), "confidence": np.zeros(0, np.float32)})
    return pd.DataFrame({"cluster": np.concatenate(labels), "confidence": np.concatenate(conf)})


def predict_source(store: Store, run_id: str, spec: str, fit: str = "stretch",
                   batch_size: int = 4096) -> tuple[pd.DataFrame, list[dict]]:
    """Cluster ids for the images of a source (folder, IDX, .npy, tar, ...) against a run.

    Images are decoded and resized to the run's image shape exactly as ingest does;
    unreadable files are returned as quarantine entries, not raised.

    Returns (DataFrame with source, image_id, cluster, confidence; quarantine list).
    """
    from cci_core.common.shapes import ImageShape
    from cci_core.ingest.batches import load_batch
    from cci_core.ingest.sources import open_source

    fn = load_predictor(store, run_id)
    shape = ImageShape(*runs.read_run(store, run_id)["shape"])
    frames, quarantine = [], []
    for batch in open_source(spec).plan(batch_size):
        got = load_batch(batch, shape, fit)
        quarantine.extend(got.quarantine)
        if got.rows.empty:
            continue
        labels, conf = fn(got.pixels)
        check_values(conf, "confidences", fn.model)
        frames.append(pd.DataFrame({"source": got.rows["source"].to_numpy(), "image_id": got.rows["image_id"].to_numpy(),
                                    "cluster": labels, "confidence": conf}))
    cols = ["source", "image_id", "cluster", "confidence"]
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)), quarantine
