"""Prefect tasks around the steps of :mod:`cci_core.cluster.cluster_run`: dicts of paths and ids only.

Steps that compute over the whole corpus run their Dask graphs on the flow's cluster
(:func:`tasks.common.cluster_compute`), so PCA, k-means and the assignment pass are spread
over every worker, not just the one running the task.
"""
from __future__ import annotations

from prefect import task
from prefect.assets import materialize

from cci_core.cluster import cluster_run
from cci_core.store import runs
from cci_core.store.lineage import LineageStore
from cci_core.store.store import Store
from tasks.common import annotate_asset, asset_for, cluster_compute, producer


@task(name="start-run", task_run_name="start run {corpus}")
def start_run_task(store_root: str, corpus: str, params: dict, version: int | None = None,
                   run_id: str | None = None) -> dict:
    return cluster_run.start_run(Store(store_root), corpus, cluster_run.ClusterParams(**params),
                                 version=version, run_id=run_id)


@task(name="fit-pca-embeddings", task_run_name="pca {plan[run_id]}")
def fit_embeddings_task(plan: dict) -> dict:
    with cluster_compute():
        return cluster_run.fit_embeddings(Store(plan["store"]), plan, producer=producer())


@task(name="choose-k", task_run_name="choose k {plan[run_id]}")
def choose_k_task(plan: dict, emb: dict) -> dict:
    with cluster_compute():
        return cluster_run.choose_k_step(Store(plan["store"]), plan, emb)


@materialize("cci://clustering/pending", name="cluster-embeddings", task_run_name="cluster {plan[run_id]} k={k}")
def cluster_task(plan: dict, emb: dict, k: int | None, choice: dict | None = None) -> dict:
    store = Store(plan["store"])
    with cluster_compute():
        out = cluster_run.cluster_step(store, plan, emb, k, producer=producer(), choice=choice)
    annotate_asset(asset_for("clustering", plan["run_id"]),
                   LineageStore(store.lineage_url).get(out["clustering_artifact_id"]))
    return out


@materialize("cci://partition/pending", name="write-partitions", task_run_name="partitions {plan[run_id]}")
def partitions_task(plan: dict, emb: dict, cl: dict) -> list[dict]:
    store = Store(plan["store"])
    parts = cluster_run.write_partitions(store, plan, cl, [(emb["pca_artifact_id"], "pca")],
                                         producer=producer())
    lin = LineageStore(store.lineage_url)
    for part in parts:
        annotate_asset(partition_asset(plan["run_id"], part["cluster"]), lin.get(part["artifact_id"]))
    return parts


def partition_asset(run_id: str, cluster: int):
    return asset_for("partition", f"{run_id}/cluster-{cluster}")


@task(name="draw-pictures", task_run_name="pictures {plan[run_id]}")
def pictures_task(plan: dict, emb: dict, cl: dict) -> list[str]:
    with cluster_compute():
        return cluster_run.write_pictures(Store(plan["store"]), plan, emb, cl)


@task(name="finish-run", task_run_name="finish {plan[run_id]}")
def finish_run_task(plan: dict, **fields) -> dict:
    return runs.finish_run(Store(plan["store"]), plan, **fields)
