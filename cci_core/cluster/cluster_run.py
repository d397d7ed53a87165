"""A clustering run in the store, step by step: the pure logic behind ``cci cluster``.

Each step reads what the step before it wrote in ``runs/<run-id>/``, writes its own
files, records lineage, and returns a small JSON-ready dict (paths and ids, never arrays),
so an orchestrator can pass the dicts along::

    plan = start_run(store, "fmnist", ClusterParams(k=10))
    emb = fit_embeddings(store, plan)                 # pca/, embeddings.zarr
    km = choose_k_step(store, plan, emb)              # only when k is a range
    cl = cluster_step(store, plan, emb, k)            # clustering/, reports/metrics.json
    parts = write_partitions(store, plan, cl, [(emb["pca_artifact_id"], "pca")])
    pics = write_pictures(store, plan, emb, cl)       # pictures/*.png
    runs.finish_run(store, plan)                           # run.json status "complete"

(:func:`run_local` does all of them in this process.)

Run folder::

    runs/<run-id>/run.json                 parameters, corpus version, step results, status
                 pca/pca.safetensors+json  fitted PCA (no pickle)
                 embeddings.zarr           (N, n_components) float32 PCA projections
                 space.zarr                (N, umap_dim) float32, only with --embedding umap
                 clustering/               model (safetensors + JSON), labels.parquet
                 reports/metrics.json      the metrics report
                 partitions/cluster-NNN.parquet  rows of each cluster
                 pictures/                 montages and scatter plots

:func:`predict` labels new images (corpus rows or files read into an array) against a
finished run.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import zarr
from safetensors.numpy import load_file, save_file
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits

from cci_core.cluster.choose_k import choose_k, parse_k_range
from cci_core.cluster.cluster_metrics import clustering_report, sample_rows
from cci_core.cluster.cluster_pictures import save_cluster_montages, save_scatter
from cci_core.cluster.clusterers import ALGORITHMS, centroids, fit_clusterer
from cci_core.cluster.features import image_features
from cci_core.cluster.kmeans import MiniBatchKMeans
from cci_core.cluster.labels import read_labels, write_labels
from cci_core.cluster.pca import PCA, SOLVERS
from cci_core.store import runs
from cci_core.store.corpus import open_corpus
from cci_core.store.store import (
    Store,
    atomic_write_json,
    atomic_write_parquet,
    process_identity,
    utc_now,
    validate_name,
)

EMBEDDINGS = ("pca", "umap")
REFERENCE_ROWS = 50000  # labelled rows kept for nearest-neighbour prediction


@dataclass
class ClusterParams:
    """Everything a clustering run depends on (recorded in run.json and in lineage).

    k : number of clusters, or a range ``"a:b"`` / ``"a:b:step"`` / ``"3,5,8"`` to choose from
    algorithm : kmeans, gmm, dbscan, hdbscan or agglomerative
    embedding : ``pca`` (cluster the PCA projections) or ``umap`` (UMAP of them first)
    n_components : PCA components (int) or explained-variance ratio (float in (0, 1))
    whiten : scale the PCA projections to unit variance
    solver : PCA solver (cov, randomized, full, tsqr)
    umap_dim, umap_neighbors, umap_min_dist, umap_sample : the manifold stage
    sample_size : rows the sample-based algorithms (and the choice of k) are fitted on
    silhouette_sample : rows the sampled silhouette is computed on
    k_criterion : silhouette or elbow, when k is a range
    eps, min_samples, min_cluster_size : dbscan / hdbscan (None = their defaults)
    seed : every random draw derives from it
    montage_size : images per cluster montage
    """
    k: int | str = 10
    algorithm: str = "kmeans"
    embedding: str = "pca"
    n_components: int | float = 50
    whiten: bool = False
    solver: str = "cov"
    umap_dim: int = 10
    umap_neighbors: int = 20
    umap_min_dist: float = 0.0
    umap_sample: int = 100000
    sample_size: int = 20000
    silhouette_sample: int = 10000
    k_criterion: str = "silhouette"
    eps: float | None = None
    min_samples: int | None = None
    min_cluster_size: int | None = None
    seed: int = 0
    montage_size: int = 16

    def ks(self) -> list[int] | None:
        """The candidate ks when k is a range, else None."""
        if isinstance(self.k, str) and not self.k.strip().isdigit():
            return parse_k_range(self.k)
        return None

    def fixed_k(self) -> int | None:
        return None if self.ks() is not None or self.k is None else int(self.k)

    def validate(self, n_rows: int, n_features: int | None = None) -> None:
        """Check every parameter against the corpus size; one clear ValueError per problem."""
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"--algorithm {self.algorithm!r}: use one of {', '.join(ALGORITHMS)}")
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"--embedding {self.embedding!r}: use one of {', '.join(EMBEDDINGS)}")
        if self.solver not in SOLVERS:
            raise ValueError(f"--solver {self.solver!r}: use one of {', '.join(SOLVERS)}")
        if n_rows < 2:
            raise ValueError(f"the corpus has {n_rows} image(s); clustering needs at least 2")
        if self.algorithm in ("dbscan", "hdbscan"):
            if self.ks() is not None:
                raise ValueError(f"{self.algorithm} finds its own number of clusters; "
                                 "a k range only applies to kmeans, gmm and agglomerative")
        else:
            ks = self.ks() or [self.fixed_k()]
            if min(ks) < 2:
                raise ValueError(f"k must be >= 2, got {min(ks)}")
            if max(ks) > n_rows:
                raise ValueError(f"k={max(ks)} is more than the corpus's {n_rows} images; use k <= {n_rows}")
        nc = self.n_components
        if isinstance(nc, float) and not nc.is_integer():
            if not 0 < nc < 1:
                raise ValueError(f"--components {nc}: a variance ratio must lie in (0, 1)")
        elif not 1 <= int(nc) <= min(n_rows, n_features or int(nc)):
            raise ValueError(f"--components {nc}: use 1..{min(n_rows, n_features or n_rows)} components "
                             "(at most the number of images and of pixel values), or a ratio in (0, 1)")
        if self.sample_size < 2 or self.silhouette_sample < 2:
            raise ValueError("--sample-size and the silhouette sample must be >= 2")
        if self.eps is not None and not self.eps > 0:
            raise ValueError(f"--eps {self.eps}: the DBSCAN radius must be > 0")
        for flag, value, low in (("--min-samples", self.min_samples, 1), ("--min-cluster-size", self.min_cluster_size, 2),
                                 ("--umap-dim", self.umap_dim, 1), ("--umap-neighbors", self.umap_neighbors, 2),
                                 ("--umap-sample", self.umap_sample, 2)):
            if value is not None and value < low:
                raise ValueError(f"{flag} {value}: must be at least {low}")


def hash_files(paths) -> str:
    """sha256 over the bytes of the given files, in order."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def check_request(store: Store, corpus: str, params: ClusterParams, version: int | None = None,
                  run_id: str | None = None):
    """Everything that can be checked before any work starts; returns the corpus.

    Raises a one-line error for an unknown corpus or version, bad parameters, k out of
    range, a run id that already finished (nothing is ever overwritten) or one another
    process is writing now.
    """
    c = open_corpus(store, corpus, version)
    params.validate(c.n_rows, int(np.prod(c.shape.hwc)))
    if run_id:
        runs.check_new_run_id(store, run_id)
    return c


def start_run(store: Store, corpus: str, params: ClusterParams, version: int | None = None,
              run_id: str | None = None) -> dict:
    """Check the corpus and parameters and create ``runs/<run-id>/run.json``.

    A run id that already finished, or that a live process is writing, is refused; an
    unfinished one left by a killed writer is removed, so the run starts from a clean folder
    (never mixing in a killed run's files). The writer recorded is the calling process: call
    this in the process of the command (the flow), so that killing the command frees the id.
    """
    c = check_request(store, corpus, params, version, run_id)
    run_id = validate_name(run_id or runs.new_run_id(corpus), "run id")
    runs.claim_run_dir(store, run_id)
    plan = {"run_id": run_id, "store": str(store.root), "run_dir": str(store.run_dir(run_id)),
            "corpus": corpus, "corpus_version": c.version, "corpus_artifact_id": c.artifact_id,
            "n_rows": c.n_rows, "shape": list(c.shape.hwc), "has_labels": c.labels() is not None,
            "params": asdict(params), "status": "running", "writer": process_identity(),
            "created_at": utc_now()}
    runs.write_run(store, run_id, plan)
    return plan


def _params(plan: dict) -> ClusterParams:
    return ClusterParams(**plan["params"])


def _corpus(store: Store, plan: dict):
    return open_corpus(store, plan["corpus"], plan["corpus_version"])


def _write_zarr(path: Path, X: da.Array) -> None:
    """Write a float32 (N, D) Dask array to a fresh Zarr store, block by block."""
    X = X.rechunk({1: -1})
    arr = zarr.create_array(str(path), shape=X.shape, chunks=(max(X.chunks[0]), X.shape[1]),
                            dtype="float32", overwrite=True)
    da.store(X.astype(np.float32), arr, lock=False)


def embeddings(plan: dict, name: str = "embeddings.zarr") -> da.Array:
    """The run's embeddings (or ``space.zarr``) as a lazy Dask array."""
    return da.from_zarr(str(Path(plan["run_dir"]) / name))


def fit_embeddings(store: Store, plan: dict, producer: dict | None = None) -> dict:
    """PCA over the corpus images (read lazily from Zarr), projections to ``embeddings.zarr``;
    with ``embedding="umap"`` also the UMAP of the projections to ``space.zarr``."""
    p, run = _params(plan), Path(plan["run_dir"])
    c = _corpus(store, plan)
    feats = image_features(c.images(), c.n_rows)
    t0 = time.perf_counter()
    try:
        pca = PCA(p.n_components, solver=p.solver, whiten=p.whiten, random_state=p.seed).fit(feats)
    except ValueError as exc:
        raise ValueError(f"corpus {plan['corpus']!r} v{plan['corpus_version']}: {exc}") from None
    pca_path = pca.save(run / "pca")
    with threadpool_limits(1, user_api="blas"):
        _write_zarr(run / "embeddings.zarr", pca.transform(feats))
    seconds = time.perf_counter() - t0
    lin = runs.lineage_store(store)
    pca_params = {k: getattr(p, k) for k in ("n_components", "whiten", "solver", "seed")}
    pca_art = lin.record(
        "pca", f"{plan['run_id']}/pca", str(run / "pca"),
        hash_files([pca_path, pca_path.with_suffix(".json")]), size=pca_path.stat().st_size,
        params=pca_params,
        metrics={"n_components": int(pca.n_components_),
                 "explained_variance": float(pca.explained_variance_ratio_.sum())},
        producer=producer, inputs=[(plan["corpus_artifact_id"], "corpus")])
    emb_art = lin.record(
        "embeddings", f"{plan['run_id']}/embeddings", str(run / "embeddings.zarr"),
        hashlib.sha256(f"{pca_art.id}|{plan['corpus_artifact_id']}".encode()).hexdigest(),
        size=int(plan["n_rows"]) * int(pca.n_components_) * 4, params=pca_params,
        producer=producer, inputs=[(pca_art.id, "pca"), (plan["corpus_artifact_id"], "corpus")])
    out = {"pca_artifact_id": pca_art.id, "embeddings_artifact_id": emb_art.id,
           "n_components": int(pca.n_components_),
           "explained_variance": float(pca.explained_variance_ratio_.sum()),
           "pca_seconds": round(seconds, 3), "space": "embeddings.zarr"}
    if p.embedding == "umap":
        from cci_core.cluster.manifold import umap_embed
        t0 = time.perf_counter()
        n_neighbors = min(p.umap_neighbors, int(plan["n_rows"]) - 1)
        Z, _, note = umap_embed(embeddings(plan), n_components=min(p.umap_dim, pca.n_components_ - 1),
                                n_neighbors=n_neighbors, min_dist=p.umap_min_dist,
                                sample_size=p.umap_sample, seed=p.seed)
        _write_zarr(run / "space.zarr", da.from_array(Z, chunks=(65536, Z.shape[1])))
        out.update(space="space.zarr", umap_note=note, umap_seconds=round(time.perf_counter() - t0, 3))
    runs.update_run(store, plan["run_id"], embeddings=out)
    return out


def choose_k_step(store: Store, plan: dict, emb: dict) -> dict:
    """Score every candidate k on a sample of the clustering space; pick one."""
    p = _params(plan)
    result = choose_k(embeddings(plan, emb["space"]), p.ks(), sample_size=p.sample_size,
                      silhouette_size=min(p.silhouette_sample, p.sample_size), seed=p.seed,
                      criterion=p.k_criterion)
    runs.update_run(store, plan["run_id"], choose_k=result)
    return result


def _algorithm_params(p: ClusterParams) -> dict:
    extra = {"eps": p.eps, "min_samples": p.min_samples, "min_cluster_size": p.min_cluster_size}
    if p.algorithm == "dbscan":
        extra.pop("min_cluster_size")
    elif p.algorithm == "hdbscan":
        extra.pop("eps")
    else:
        extra = {}
    return {k: v for k, v in extra.items() if v is not None}


def _save_model(result, directory: Path) -> list[Path]:
    """The fitted model without pickle: k-means centres, GMM parameters, or centroids."""
    directory.mkdir(parents=True, exist_ok=True)
    if result.algorithm == "kmeans":
        path = result.model.save(directory)
        return [path, path.with_suffix(".json")]
    arrays = {"centers": np.ascontiguousarray(result.centers, dtype=np.float64)}
    if result.algorithm == "gmm":
        g = result.model
        arrays.update(weights=g.weights_, means=g.means_, covariances=g.covariances_,
                      precisions_cholesky=g.precisions_cholesky_)
        arrays = {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in arrays.items()}
    path = directory / "model.safetensors"
    save_file(arrays, str(path))
    meta = directory / "model.json"
    meta.write_text(json.dumps({"algorithm": result.algorithm,
                                "covariance_type": getattr(result.model, "covariance_type", None)}))
    return [path, meta]


def _save_reference(plan: dict, labels: np.ndarray, directory: Path, seed: int) -> Path:
    """A seeded sample of labelled PCA rows: what nearest-neighbour prediction votes with."""
    rows = sample_rows(labels.size, REFERENCE_ROWS, seed)
    X = np.asarray(embeddings(plan)[rows].compute(), dtype=np.float32)
    path = directory / "reference.safetensors"
    save_file({"embeddings": np.ascontiguousarray(X), "labels": labels[rows].astype(np.int32),
               "rows": rows.astype(np.int64)}, str(path))
    return path


def cluster_step(store: Store, plan: dict, emb: dict, k: int | None,
                 producer: dict | None = None, choice: dict | None = None) -> dict:
    """Cluster the run's space, save the model, labels and the metrics report, record lineage."""
    p, run = _params(plan), Path(plan["run_dir"])
    X = embeddings(plan, emb["space"])
    t0 = time.perf_counter()
    result = fit_clusterer(X, p.algorithm, k, sample_size=p.sample_size, seed=p.seed,
                           **_algorithm_params(p))
    seconds = time.perf_counter() - t0
    labels = result.labels
    if result.n_clusters == 0:
        raise ValueError(f"{p.algorithm} found no clusters (every row is noise); "
                         "try a larger --eps or a smaller --min-cluster-size")
    cdir = run / "clustering"
    files = _save_model(result, cdir)
    files.append(_save_reference(plan, labels, cdir, p.seed))
    c = _corpus(store, plan)
    files.append(write_labels(cdir, c, labels))

    y_true = c.labels()
    y_codes = pd.factorize(y_true)[0] if y_true is not None else None
    report = clustering_report(X, labels, result.centers if len(result.centers) else None,
                               y_true=y_codes, sample_size=p.silhouette_sample, seed=p.seed)
    report.update(algorithm=p.algorithm, embedding=p.embedding, space=emb["space"], k=k,
                  extension=result.extension, sample_size=result.sample_size,
                  fit_seconds=round(seconds, 3), n_components=emb["n_components"],
                  explained_variance=emb["explained_variance"],
                  corpus=plan["corpus"], corpus_version=plan["corpus_version"], run_id=plan["run_id"])
    if emb.get("umap_note"):
        report["umap"] = emb["umap_note"]
    if choice:
        report["choose_k"] = choice
    atomic_write_json(run / "reports" / "metrics.json", report)

    headline = {m: report.get(m) for m in ("inertia", "silhouette", "davies_bouldin", "calinski_harabasz",
                                           "acc", "nmi", "ari", "purity") if report.get(m) is not None}
    art = runs.lineage_store(store).record(
        "clustering", f"{plan['run_id']}/clustering", str(cdir), hash_files(files),
        size=sum(f.stat().st_size for f in files),
        params={**plan["params"], "k": k, "run_id": plan["run_id"]},
        metrics={"n_clusters": result.n_clusters, "n_noise": result.n_noise, **headline},
        producer=producer,
        inputs=[(emb["embeddings_artifact_id"], "features"), (emb["pca_artifact_id"], "pca"),
                (plan["corpus_artifact_id"], "corpus")])
    out = {"clustering_artifact_id": art.id, "k": k, "n_clusters": result.n_clusters,
           "n_noise": result.n_noise, "sizes": report["sizes"], "report": str(run / "reports" / "metrics.json"),
           "metrics": headline, "extension": result.extension, "fit_seconds": round(seconds, 3)}
    runs.update_run(store, plan["run_id"], clustering=out)
    return out


def run_labels(plan: dict) -> np.ndarray:
    """(N,) int32 cluster ids of the run's corpus rows (-1 = noise)."""
    return read_labels(plan["run_dir"])


def write_partitions(store: Store, plan: dict, cl: dict, inputs: list[tuple[str, str]],
                     producer: dict | None = None) -> list[dict]:
    """One Parquet file per cluster (row, image_id), each a lineage artifact.

    cl : the clustering step's result (``clustering_artifact_id``, ``n_clusters``, ``k``)
    inputs : what else each partition was made from besides the corpus and the clustering,
        as ``(artifact id, role)`` (the PCA for a clustering run, the classifier for a refined one)
    """
    run = Path(plan["run_dir"])
    df = pd.read_parquet(run / "clustering" / "labels.parquet")
    lin = runs.lineage_store(store)
    parts = []
    for cluster in range(cl["n_clusters"]):
        rows = df[df["cluster"] == cluster][["row", "image_id"]].reset_index(drop=True)
        path = atomic_write_parquet(run / "partitions" / f"cluster-{cluster:03d}.parquet", rows)
        art = lin.record(
            "partition", f"{plan['run_id']}/cluster-{cluster}", str(path), hash_files([path]),
            size=path.stat().st_size,
            params={"cluster": cluster, "run_id": plan["run_id"], "corpus": plan["corpus"],
                    "corpus_version": plan["corpus_version"], **plan["params"], "k": cl["k"]},
            metrics={"count": int(len(rows))}, producer=producer,
            inputs=[(plan["corpus_artifact_id"], "corpus"), *inputs,
                    (cl["clustering_artifact_id"], "clustering")])
        parts.append({"cluster": cluster, "count": int(len(rows)), "path": str(path), "artifact_id": art.id})
    runs.update_run(store, plan["run_id"], partitions=parts)
    return parts


def partition_rows(store: Store, run_id: str, cluster: int) -> np.ndarray:
    """Corpus rows of one cluster of a finished run, sorted."""
    path = store.run_dir(run_id) / "partitions" / f"cluster-{cluster:03d}.parquet"
    if not path.exists():
        raise LookupError(f"run {run_id!r} has no partition for cluster {cluster}")
    return np.sort(pd.read_parquet(path, columns=["row"])["row"].to_numpy(np.int64))


def write_pictures(store: Store, plan: dict, emb: dict, cl: dict) -> list[str]:
    """Montages of the images nearest each centre, and scatter plots of the embedding."""
    p, pics = _params(plan), Path(plan["run_dir"]) / "pictures"
    X = embeddings(plan, emb["space"])
    labels = run_labels(plan)
    centers = centroids(X, labels, cl["n_clusters"])
    c = _corpus(store, plan)
    paths = save_cluster_montages(c.images(), X, labels, centers, pics, n_per_cluster=p.montage_size,
                                  n_rows=c.n_rows)
    if emb["n_components"] >= 2:  # a one-component PCA has no plane to draw
        paths.append(save_scatter(embeddings(plan), labels, pics / "scatter-pca.png", seed=p.seed,
                                  title=f"{plan['corpus']}: PCA components 1-2, {cl['n_clusters']} clusters"))
    if emb["space"] != "embeddings.zarr" and X.shape[1] >= 2:
        paths.append(save_scatter(X, labels, pics / "scatter-umap.png", seed=p.seed,
                                  title=f"{plan['corpus']}: UMAP dimensions 1-2"))
    return [str(x) for x in paths]


def run_local(store: Store, corpus: str, params: ClusterParams, version: int | None = None,
              run_id: str | None = None) -> dict:
    """Every step of a run in this process, in order (what the cluster flow does on Dask).

    Returns the finished run.json.
    """
    plan = start_run(store, corpus, params, version=version, run_id=run_id)
    emb = fit_embeddings(store, plan)
    choice = choose_k_step(store, plan, emb) if params.ks() else None
    cl = cluster_step(store, plan, emb, choice["k"] if choice else params.fixed_k(), choice=choice)
    write_partitions(store, plan, cl, [(emb["pca_artifact_id"], "pca")])
    write_pictures(store, plan, emb, cl)
    return runs.finish_run(store, plan)


# ----- prediction against a finished run ---------------------------------------------------

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
    if p.embedding == "pca" and p.algorithm == "kmeans":
        centers = MiniBatchKMeans.load(cdir).cluster_centers_
        method = "nearest centre"
    elif p.embedding == "pca" and p.algorithm == "agglomerative":
        centers = load_file(str(cdir / "model.safetensors"))["centers"]
        method = "nearest centre"
    elif p.embedding == "pca" and p.algorithm == "gmm":
        arrays = load_file(str(cdir / "model.safetensors"))
        meta = json.loads((cdir / "model.json").read_text())
        gmm = GaussianMixture(len(arrays["weights"]), covariance_type=meta["covariance_type"])
        gmm.weights_, gmm.means_ = arrays["weights"], arrays["means"]
        gmm.covariances_, gmm.precisions_cholesky_ = arrays["covariances"], arrays["precisions_cholesky"]
        method = "gmm posterior"
    else:
        ref = load_file(str(cdir / "reference.safetensors"))
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
    from cci_core.refine.refine import load_classifier
    model = load_classifier(run["classifier"])

    def predict(images) -> tuple[np.ndarray, np.ndarray]:
        images = _check_shape(images, run)
        if len(images) == 0:
            return np.zeros(0, np.int32), np.zeros(0, np.float32)
        return assign_classifier(model, images)
    predict.method = "cci classifier"
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
    from cci_core.ingest.sources import load_batch, open_source

    fn = load_predictor(store, run_id)
    shape = ImageShape(*runs.read_run(store, run_id)["shape"])
    frames, quarantine = [], []
    for batch in open_source(spec).plan(batch_size):
        got = load_batch(batch, shape, fit)
        quarantine.extend(got.quarantine)
        if not got.rows:
            continue
        labels, conf = fn(got.pixels)
        frames.append(pd.DataFrame({"source": [r["source"] for r in got.rows], "image_id": [r["image_id"] for r in got.rows],
                                    "cluster": labels, "confidence": conf}))
    cols = ["source", "image_id", "cluster", "confidence"]
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)), quarantine
