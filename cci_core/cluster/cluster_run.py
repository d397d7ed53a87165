"""A clustering run in the store, step by step: the pure logic behind ``cci cluster``.

Each step reads what the step before it wrote in ``runs/<run-id>/``, writes its own
files, records lineage, and returns a small JSON-ready dict (paths and ids, never arrays),
so an orchestrator can pass the dicts along; the steps take the dicts or the typed records
of :mod:`cci_core.cluster.records` (``ClusterPlan``, ``EmbeddingsSummary``, ``ClusteringSummary``)::

    plan = start_run(store, "fmnist", ClusterParams(k=10))
    emb = fit_embeddings(store, plan)                 # pca/, embeddings.zarr
    km = choose_k_step(store, plan, emb)              # only when k is a range
    cl = cluster_step(store, plan, emb, k)            # clustering/, reports/metrics.json
    parts = write_partitions(store, plan, cl, [(emb["pca_artifact_id"], "pca")])
    pics = write_pictures(store, plan, emb, cl)       # pictures/*.png
    runs.finish_run(store, plan)                      # run.json status "complete"

(:func:`run_local` does all of them in this process.)

Run folder::

    runs/<run-id>/run.json                 parameters, corpus version, step results, status
                 pca/pca.safetensors+json  fitted PCA (no pickle)
                 embeddings.zarr           (N, n_components) float32 PCA projections
                 space.zarr                (N, umap_dim) float32, only with --embedding umap
                 clustering/               model (safetensors + JSON), labels.parquet
                 reports/metrics.json      the metrics report
                 reports/explore.html      the cluster explorer page (cci_core.cluster.explore)
                 partitions/cluster-NNN.parquet  rows of each cluster
                 pictures/                 montages and scatter plots

Labelling new images against a finished run is :mod:`cci_core.predict.predict`.
"""
from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import zarr

from cci_core.cluster.labels import LABELS_FILE, RUN_FILES_FIX, read_labels, write_labels
from cci_core.cluster.records import ClusteringSummary, ClusterParams, ClusterPlan, EmbeddingsSummary, LabelledRun
from cci_core.store import fs, integrity, runs
from cci_core.store.corpus import Corpus, open_corpus
from cci_core.store.record_check import read_table
from cci_core.store.store import (
    Store,
    atomic_write_json,
    atomic_write_parquet,
    hash_files,
    process_identity,
    utc_now,
    validate_name,
)

# each step imports the algorithms it runs (sklearn, scipy, dask.array, matplotlib: seconds of import);
# the CLI and the flow's own process call only check_request and start_run
if TYPE_CHECKING:
    import dask.array as da


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
    plan = ClusterPlan(run_id=run_id, store=str(store.root), run_dir=str(store.run_dir(run_id)), corpus=corpus,
                       corpus_version=c.version, corpus_artifact_id=c.artifact_id, n_rows=c.n_rows,
                       shape=tuple(c.shape.hwc), has_labels=c.labels() is not None, params=params,
                       status="running", writer=process_identity(), created_at=utc_now())
    return runs.write_run(store, run_id, plan.to_json())


def _corpus(store: Store, plan: ClusterPlan) -> Corpus:
    return open_corpus(store, plan.corpus, plan.corpus_version)


EMBEDDING_CHUNK_BYTES = 16 << 20


def _write_zarr(path, X: da.Array) -> None:
    """Write a float32 (N, D) Dask array to a fresh Zarr store (a folder or a URL), block by block.

    Chunks hold about ``EMBEDDING_CHUNK_BYTES`` (65,536 rows of 50 components) and never fewer rows
    than X's blocks: every later pass (k-means rounds, the report, the pictures) reads each chunk as
    one task, and chunks of the corpus's 4,096 rows made a 1M-row clustering spend most of its time
    on per-chunk overhead.
    """
    import dask.array as da
    rows = 1 << max(0, (EMBEDDING_CHUNK_BYTES // (4 * max(1, X.shape[1]))).bit_length() - 1)
    rows = max(1, min(max(rows, max(X.chunks[0], default=1)), X.shape[0]))
    X = X.rechunk({0: rows, 1: -1})  # blocks = chunks: no two tasks write one chunk
    arr = zarr.create_array(fs.zarr_url(path), shape=X.shape, chunks=(rows, X.shape[1]),
                            dtype="float32", compressors=integrity.compressors(), overwrite=True)
    da.store(X.astype(np.float32), arr, lock=False)


@contextlib.contextmanager
def space_in_memory(X: da.Array) -> Iterator[np.ndarray | da.Array]:
    """The space a step makes several passes over: read whole into this process (one parallel
    read) with the step's Dask graphs on the synchronous scheduler, when it fits a quarter of the
    memory budget (``$CCI_MEMORY_BUDGET_MB``); else ``X`` itself, each pass on the cluster.

    The k-means rounds, the report's passes and the pictures' passes over 1M x 50 embeddings took
    23 s as Dask round trips on two workers and 7 CPU-s in one process.
    """
    import dask

    from cci_core.common.memory import memory_budget_bytes
    if X.nbytes > memory_budget_bytes() // 4:
        yield X
        return
    local = X.compute()
    with dask.config.set(scheduler="sync"):
        yield local


def embeddings(plan: ClusterPlan | Mapping, name: str = "embeddings.zarr") -> da.Array:
    """The run's embeddings (or ``space.zarr``) as a lazy Dask array (a damaged chunk is a
    :class:`~cci_core.store.integrity.ChunkDamagedError` when computed)."""
    import dask.array as da
    rdir = ClusterPlan.of(plan).dir
    return da.from_zarr(integrity.open_checked(rdir / name, f"runs/{fs.as_path(rdir).name}/{name}"))


def fit_blocks(X: da.Array, max_rows: int) -> da.Array:
    """The rows a PCA is fitted on: all of ``X`` when it has at most ``max_rows`` rows (or
    ``max_rows`` is 0), else evenly spaced whole blocks holding at least ``max_rows`` rows, the
    first and last among them (whole blocks: each is read once, not a row from every chunk)."""
    n_blocks = X.numblocks[0]
    if not max_rows or X.shape[0] <= max_rows or n_blocks < 2:
        return X
    take = min(n_blocks, -(-max_rows * n_blocks // X.shape[0]) + 1)
    picked = np.unique(np.linspace(0, n_blocks - 1, take).round().astype(int))
    return X.blocks[picked.tolist()]


def fit_embeddings(store: Store, plan: ClusterPlan | Mapping, producer: dict | None = None) -> dict:
    """PCA over the corpus images (read lazily from Zarr; fitted on at most about ``pca_fit_rows``
    of them, see :func:`fit_blocks`), projections of every image to ``embeddings.zarr``;
    with ``embedding="umap"`` also the UMAP of the projections to ``space.zarr``.

    Returns :class:`EmbeddingsSummary` as its JSON dict (also recorded as run.json's ``embeddings``).
    """
    import dask.array as da
    from threadpoolctl import threadpool_limits

    from cci_core.cluster.features import image_features
    from cci_core.cluster.pca import PCA
    plan = ClusterPlan.of(plan)
    p, run = plan.params, plan.dir
    c = _corpus(store, plan)
    feats = image_features(c.images(), c.n_rows)
    fit_feats = fit_blocks(feats, p.pca_fit_rows)
    t0 = time.perf_counter()
    try:
        pca = PCA(p.n_components, solver=p.solver, whiten=p.whiten, random_state=p.seed).fit(fit_feats)
    except ValueError as exc:
        raise ValueError(f"corpus {plan.corpus!r} v{plan.corpus_version}: {exc}") from None
    pca_path = pca.save(run / "pca")
    with threadpool_limits(1, user_api="blas"):
        _write_zarr(run / "embeddings.zarr", pca.transform(feats))
    seconds = time.perf_counter() - t0
    lin = runs.lineage_store(store)
    pca_params = {**{k: getattr(p, k) for k in ("n_components", "whiten", "solver", "seed")},
                  "fit_rows": int(fit_feats.shape[0])}
    pca_art = lin.record(
        "pca", f"{plan.run_id}/pca", str(run / "pca"),
        hash_files([pca_path, pca_path.with_suffix(".json")]), size=pca_path.stat().st_size,
        params=pca_params,
        metrics={"n_components": int(pca.n_components_),
                 "explained_variance": float(pca.explained_variance_ratio_.sum())},
        producer=producer, inputs=[(plan.corpus_artifact_id, "corpus")])
    emb_art = lin.record(
        "embeddings", f"{plan.run_id}/embeddings", str(run / "embeddings.zarr"),
        hashlib.sha256(f"{pca_art.content_hash}|{plan.corpus_artifact_id}".encode()).hexdigest(),  # PCA and corpus fix it
        size=int(plan.n_rows) * int(pca.n_components_) * 4, params=pca_params,
        producer=producer, inputs=[(pca_art.id, "pca"), (plan.corpus_artifact_id, "corpus")])
    out = EmbeddingsSummary(pca_artifact_id=pca_art.id, embeddings_artifact_id=emb_art.id,
                            n_components=int(pca.n_components_),
                            explained_variance=float(pca.explained_variance_ratio_.sum()),
                            pca_seconds=round(seconds, 3), pca_fit_rows=int(fit_feats.shape[0]))
    if p.embedding == "umap":
        from cci_core.cluster.manifold import umap_embed
        t0 = time.perf_counter()
        n_neighbors = min(p.umap_neighbors, int(plan.n_rows) - 1)
        Z, _, note = umap_embed(embeddings(plan), n_components=min(p.umap_dim, pca.n_components_ - 1),
                                n_neighbors=n_neighbors, min_dist=p.umap_min_dist,
                                sample_size=p.umap_sample, seed=p.seed)
        _write_zarr(run / "space.zarr", da.from_array(Z, chunks=(65536, Z.shape[1])))
        out = replace(out, space="space.zarr", umap_note=note, umap_seconds=round(time.perf_counter() - t0, 3))
    runs.update_run(store, plan.run_id, embeddings=out.to_json())
    return out.to_json()


def choose_k_step(store: Store, plan: ClusterPlan | Mapping, emb: EmbeddingsSummary | Mapping) -> dict:
    """Score every candidate k on a sample of the clustering space; pick one."""
    from cci_core.cluster.choose_k import choose_k
    plan, emb = ClusterPlan.of(plan), EmbeddingsSummary.of(emb)
    p = plan.params
    result = choose_k(embeddings(plan, emb.space), p.ks(), sample_size=p.sample_size,
                      silhouette_size=min(p.silhouette_sample, p.sample_size), seed=p.seed,
                      criterion=p.k_criterion)
    runs.update_run(store, plan.run_id, choose_k=result)
    return result


def cluster_step(store: Store, plan: ClusterPlan | Mapping, emb: EmbeddingsSummary | Mapping, k: int | None,
                 producer: dict | None = None, choice: dict | None = None) -> dict:
    """Cluster the run's space, save the model, labels and the metrics report, record lineage.

    Returns :class:`ClusteringSummary` as its JSON dict (also recorded as run.json's ``clustering``).
    """
    from cci_core.cluster.cluster_metrics import clustering_report
    from cci_core.cluster.clusterers import fit_clusterer
    from cci_core.cluster.clustering_model import save_model, save_reference
    plan, emb = ClusterPlan.of(plan), EmbeddingsSummary.of(emb)
    p, run = plan.params, plan.dir
    with space_in_memory(embeddings(plan, emb.space)) as X:
        t0 = time.perf_counter()
        result = fit_clusterer(X, p.algorithm, k, sample_size=p.sample_size, seed=p.seed,
                               **p.algorithm_params())
        seconds = time.perf_counter() - t0
        labels = result.labels
        if result.n_clusters == 0:
            raise ValueError(f"{p.algorithm} found no clusters (every row is noise); "
                             "try a larger --eps or a smaller --min-cluster-size")
        cdir = run / "clustering"
        files = save_model(result, cdir)
        files.append(save_reference(embeddings(plan), labels, cdir, p.seed))
        c = _corpus(store, plan)
        files.append(write_labels(cdir, c, labels))

        y_true = c.labels()
        y_codes = pd.factorize(y_true)[0] if y_true is not None else None
        report = clustering_report(X, labels, result.centers if len(result.centers) else None,
                                   y_true=y_codes, sample_size=p.silhouette_sample, seed=p.seed)
    report.update(algorithm=p.algorithm, embedding=p.embedding, space=emb.space, k=k,
                  extension=result.extension, sample_size=result.sample_size,
                  fit_seconds=round(seconds, 3), n_components=emb.n_components,
                  explained_variance=emb.explained_variance,
                  corpus=plan.corpus, corpus_version=plan.corpus_version, run_id=plan.run_id)
    if emb.umap_note:
        report["umap"] = emb.umap_note
    if choice:
        report["choose_k"] = choice
    atomic_write_json(run / "reports" / "metrics.json", report)

    headline = {m: report.get(m) for m in ("inertia", "silhouette", "davies_bouldin", "calinski_harabasz",
                                           "acc", "nmi", "ari", "purity") if report.get(m) is not None}
    art = runs.lineage_store(store).record(
        "clustering", f"{plan.run_id}/clustering", str(cdir), hash_files(files),
        size=sum(f.stat().st_size for f in files),
        params={**asdict(p), "k": k, "run_id": plan.run_id},
        metrics={"n_clusters": result.n_clusters, "n_noise": result.n_noise, **headline},
        producer=producer,
        inputs=[(emb.embeddings_artifact_id, "features"), (emb.pca_artifact_id, "pca"),
                (plan.corpus_artifact_id, "corpus")])
    out = ClusteringSummary(clustering_artifact_id=art.id, k=k, n_clusters=result.n_clusters,
                            n_noise=result.n_noise, sizes=report["sizes"],
                            report=str(run / "reports" / "metrics.json"), metrics=headline,
                            extension=result.extension, fit_seconds=round(seconds, 3)).to_json()
    runs.update_run(store, plan.run_id, clustering=out)
    return out


def run_labels(run: ClusterPlan | Mapping) -> np.ndarray:
    """(N,) int32 cluster ids of the run's corpus rows (-1 = noise); ``run``: the run.json of any
    labelling run, or a clustering plan."""
    return read_labels(LabelledRun.of(run).run_dir)


def write_partitions(store: Store, plan, cl, inputs: list[tuple[str, str]],
                     producer: dict | None = None) -> list[dict]:
    """One Parquet file per cluster (row, image_id), each a lineage artifact.

    plan : the plan of any labelling run (clustering, refined, self-conditioned, refresh), typed or its dict
    cl : that run's clustering summary, typed or its dict (``clustering_artifact_id``, ``n_clusters``, ``k``)
    inputs : what else each partition was made from besides the corpus and the clustering,
        as ``(artifact id, role)`` (the PCA for a clustering run, the classifier for a refined one)
    """
    plan = LabelledRun.of(plan)
    cl = cl.to_json() if hasattr(cl, "to_json") else cl
    run = fs.as_path(plan.run_dir)
    df = read_table(run / "clustering" / LABELS_FILE, RUN_FILES_FIX)
    lin = runs.lineage_store(store)
    parts = []
    for cluster in range(cl["n_clusters"]):
        rows = df[df["cluster"] == cluster][["row", "image_id"]].reset_index(drop=True)
        path = atomic_write_parquet(run / "partitions" / f"cluster-{cluster:03d}.parquet", rows)
        art = lin.record(
            "partition", f"{plan.run_id}/cluster-{cluster}", str(path), hash_files([path]),
            size=path.stat().st_size,
            params={"cluster": cluster, "run_id": plan.run_id, "corpus": plan.corpus,
                    "corpus_version": plan.corpus_version, **plan.params, "k": cl["k"]},
            metrics={"count": int(len(rows))}, producer=producer,
            inputs=[(plan.corpus_artifact_id, "corpus"), *inputs,
                    (cl["clustering_artifact_id"], "clustering")])
        parts.append({"cluster": cluster, "count": int(len(rows)), "path": str(path), "artifact_id": art.id})
    runs.update_run(store, plan.run_id, partitions=parts)
    return parts


def partition_rows(store: Store, run_id: str, cluster: int) -> np.ndarray:
    """Corpus rows of one cluster of a finished run, sorted."""
    path = store.run_dir(run_id) / "partitions" / f"cluster-{cluster:03d}.parquet"
    if not path.exists():
        raise LookupError(f"run {run_id!r} has no partition for cluster {cluster}")
    return np.sort(read_table(path, RUN_FILES_FIX, columns=["row"])["row"].to_numpy(np.int64))


def write_pictures(store: Store, plan: ClusterPlan | Mapping, emb: EmbeddingsSummary | Mapping,
                   cl: ClusteringSummary | Mapping) -> list[str]:
    """Montages of the images nearest each centre, scatter plots of the embedding, and the
    cluster explorer page ``reports/explore.html`` (:mod:`cci_core.cluster.explore`)."""
    from cci_core.cluster.cluster_pictures import save_cluster_montages, save_scatter
    from cci_core.cluster.clusterers import centroids
    from cci_core.cluster.explore import build_explorer
    plan, emb = ClusterPlan.of(plan), EmbeddingsSummary.of(emb)
    n_clusters = cl.n_clusters if isinstance(cl, ClusteringSummary) else cl["n_clusters"]
    p, pics = plan.params, plan.dir / "pictures"
    labels = run_labels(plan)
    c = _corpus(store, plan)
    with space_in_memory(embeddings(plan, emb.space)) as X:
        centers = centroids(X, labels, n_clusters)
        paths = save_cluster_montages(c.images(), X, labels, centers, pics, n_per_cluster=p.montage_size,
                                      n_rows=c.n_rows)
        if emb.n_components >= 2:  # a one-component PCA has no plane to draw
            pca_space = X if emb.space == "embeddings.zarr" else embeddings(plan)
            paths.append(save_scatter(pca_space, labels, pics / "scatter-pca.png", seed=p.seed,
                                      title=f"{plan.corpus}: PCA components 1-2, {n_clusters} clusters"))
        if emb.space != "embeddings.zarr" and X.shape[1] >= 2:
            paths.append(save_scatter(X, labels, pics / "scatter-umap.png", seed=p.seed,
                                      title=f"{plan.corpus}: UMAP dimensions 1-2"))
    paths.append(build_explorer(store, plan.run_id))  # reports/explore.html
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
