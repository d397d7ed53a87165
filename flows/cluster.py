"""The cluster flow: PCA on Dask, choose k, cluster, report, partitions, pictures."""
from __future__ import annotations

from dataclasses import asdict

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact

from cci_core.cluster.explore import explorer_path
from cci_core.store import fs
from cci_core.store.store import Store
from flows import naming
from flows.common import artifact_key, fig, file_link, png_markdown
from flows.settings import ClusterSettings
from tasks.cluster import (
    choose_k_task,
    cluster_task,
    finish_run_task,
    fit_embeddings_task,
    partition_asset,
    partitions_task,
    pictures_task,
    start_run_task,
)
from tasks.common import asset_for

METRIC_KEYS = ("n_clusters", "n_noise", "inertia", "silhouette", "silhouette_sample_size", "davies_bouldin",
               "calinski_harabasz", "acc", "nmi", "ari", "purity")


@flow(name="cci-cluster", log_prints=True, flow_run_name=naming.cluster_name)
def cluster_flow(settings: ClusterSettings) -> dict:
    """Cluster the corpus into k groups (or choose k in a range); write everything to a new run."""
    log = get_run_logger()
    corpus, p = settings.corpus, settings.params
    algorithm, embedding = p.algorithm, p.embedding
    store_root = str(Store(settings.store_root).ensure().root)
    plan = start_run_task(store_root, corpus, asdict(p), version=settings.version, run_id=settings.run_id)
    run_id = plan["run_id"]
    log.info("Run %s: corpus %s v%d, %d images %s, %s on %s", run_id, corpus, plan["corpus_version"],
             plan["n_rows"], "x".join(map(str, plan["shape"])), algorithm, embedding)
    progress = create_progress_artifact(0.0, description=f"cluster {corpus}: run {run_id}")

    # Every compute step is submitted, not called: a called task runs in this (the client's)
    # process, a submitted one on a worker of the flow's Dask cluster, where its own Dask
    # graphs spread over every worker (tasks.common.cluster_compute).
    emb = fit_embeddings_task.submit(plan).result()
    update_progress_artifact(progress, 35.0, description=f"cluster {corpus}: run {run_id}, embedding fitted")
    log.info("PCA: %d components explain %.1f%% of the variance", emb["n_components"],
             100 * emb["explained_variance"])
    choice = None
    if p.ks() is not None:
        choice = choose_k_task.submit(plan, emb).result()
        log.info("Chose k=%d by %s (elbow says %d, silhouette says %d)", choice["k"], choice["criterion"],
                 choice["elbow_k"], choice["silhouette_k"])
        create_table_artifact(key=artifact_key("choose-k", corpus), table=choice["scores"],
                              description=f"k candidates for run {run_id}: chose {choice['k']}")
    k_used = choice["k"] if choice else p.fixed_k()
    update_progress_artifact(progress, 50.0, description=f"cluster {corpus}: run {run_id}, k={k_used}")

    # the corpus upstream: the clustering's asset event names what it was made from
    cl = cluster_task.with_options(assets=[asset_for("clustering", run_id)],
                                   asset_deps=[asset_for("corpus", corpus)]).submit(
        plan, emb, k_used, choice).result()
    update_progress_artifact(progress, 70.0, description=f"cluster {corpus}: run {run_id}, clustered")
    assets = [partition_asset(run_id, c) for c in range(cl["n_clusters"])]
    parts_future = partitions_task.with_options(assets=assets, asset_deps=[asset_for("clustering", run_id)]).submit(
        plan, emb, cl)
    pictures_future = pictures_task.submit(plan, emb, cl)  # beside the partitions: they share no file
    parts = parts_future.result()
    update_progress_artifact(progress, 80.0, description=f"cluster {corpus}: run {run_id}, partitions written")
    pictures = pictures_future.result()
    run = finish_run_task(plan)
    update_progress_artifact(progress, 100.0, description=f"cluster {corpus}: run {run_id}, done")

    create_table_artifact(
        key=artifact_key("cluster-metrics", corpus),
        table=[{"metric": m, "value": fig(cl["metrics"].get(m, cl.get(m)))} for m in METRIC_KEYS
               if cl["metrics"].get(m, cl.get(m)) is not None],
        description=f"metrics of run {run_id} ({algorithm}, k={k_used}, {embedding})")
    create_table_artifact(
        key=artifact_key("cluster-sizes", corpus),
        table=[{"cluster": p["cluster"], "images": p["count"], "partition": p["artifact_id"],
                "file": file_link(p["path"], fs.as_path(p["path"]).name) if p.get("path") else ""} for p in parts],
        description=f"cluster sizes of run {run_id}")
    shown = [p for p in pictures if p.endswith(("clusters.png", "scatter-pca.png", "scatter-umap.png"))]
    create_markdown_artifact(
        key=artifact_key("cluster-pictures", corpus), description=f"pictures of run {run_id}",
        markdown=f"# Run `{run_id}`\n\ncorpus `{corpus}` v{plan['corpus_version']}; run folder: "
                 f"{file_link(plan['run_dir'])}; cluster explorer: {file_link(explorer_path(plan['run_dir']), 'explore.html')}; "
                 f"lineage: `cci lineage show {cl['clustering_artifact_id']}`\n\n"
                 + "\n".join(png_markdown(p, fs.as_path(p).stem) for p in shown))
    summary = {"run_id": run_id, "run_dir": plan["run_dir"], "corpus": corpus,
               "corpus_version": plan["corpus_version"], "n_rows": plan["n_rows"], "k": k_used,
               "algorithm": algorithm, "embedding": embedding, "pca_artifact_id": emb["pca_artifact_id"],
               "embeddings_artifact_id": emb["embeddings_artifact_id"],
               "clustering_artifact_id": cl["clustering_artifact_id"], "metrics": cl["metrics"],
               "n_clusters": cl["n_clusters"], "n_noise": cl["n_noise"], "extension": cl["extension"],
               "partitions": parts, "pictures": pictures, "report": cl["report"], "choose_k": choice,
               "status": run["status"]}
    return summary
