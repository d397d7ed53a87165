"""Prefect tasks around :mod:`cci_core.features.feature_spaces` and :mod:`cci_core.generate.selfcond`: dicts of
paths and ids only. Model work (feature extraction, GAN training) is tagged ``gpu``."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.assets import materialize

from cci_core.cluster import cluster_run
from cci_core.features import feature_spaces as fs
from cci_core.features.probes import evaluate_space
from cci_core.features.report import write_report
from cci_core.generate import selfcond as sc
from cci_core.store.lineage import LineageStore
from cci_core.store.store import Store
from tasks.common import annotate_asset, asset_for, producer


def embeddings_asset(run_id: str, space: str):
    return asset_for("embeddings", f"{run_id}/features/{space}")


def features_report_asset(run_id: str):
    return asset_for("report", f"{run_id}/features")


# ----- cci features

@task(name="plan-features", task_run_name="plan features {run_id}")
def plan_features_task(store_root: str, run_id: str, params: dict) -> dict:
    return fs.plan_features(Store(store_root), run_id, fs.FeatureParams(**params))


@task(name="train-corpus-vae", tags=["gpu"], retries=1, retry_delay_seconds=5, task_run_name="train vae {run_id}")
def train_corpus_vae_task(store_root: str, run_id: str, steps: int, seed: int, device: str | None) -> dict:
    return fs.train_corpus_vae(Store(store_root), run_id, steps=steps, seed=seed, device=device, producer=producer())


@task(name="locate-features", task_run_name="locate {space[space]}")
def locate_space_task(plan: dict, space: dict) -> dict:
    """Pixels and PCA: read where they already are (the corpus, the run's embeddings.zarr)."""
    return fs.extract_space(Store(plan["store"]), plan, space)


@materialize("cci://embeddings/pending", name="extract-features", tags=["gpu"], retries=1, retry_delay_seconds=5,
             task_run_name="extract {space[space]}")
def extract_space_task(plan: dict, space: dict) -> dict:
    """Embed the corpus with one trained model (on the device chosen on the worker that runs it)
    into Zarr; the lineage record is attached to the task's Prefect asset."""
    store = Store(plan["store"])
    ext = fs.extract_space(store, plan, space, producer=producer())
    annotate_asset(embeddings_asset(plan["run_id"], space["space"]),
                   LineageStore(store.lineage_url).get(ext["embeddings_artifact_id"]))
    return ext


@task(name="evaluate-feature-space", task_run_name="evaluate {ext[space]}")
def evaluate_space_task(plan: dict, ext: dict) -> dict:
    return evaluate_space(Store(plan["store"]), plan, ext)


@materialize("cci://report/pending", name="write-features-report", task_run_name="report {plan[run_id]}")
def write_features_report_task(plan: dict, results: list[dict]) -> dict:
    store = Store(plan["store"])
    summary = write_report(store, plan, results, producer=producer())
    annotate_asset(features_report_asset(plan["run_id"]),
                   LineageStore(store.lineage_url).get(summary["report_artifact_id"]))
    return summary


# ----- the self-conditioned GAN

@task(name="start-self-conditioned", task_run_name="start self-conditioning {run_id}")
def start_selfcond_task(store_root: str, run_id: str, params: dict, new_run_id: str | None) -> dict:
    return sc.start_selfcond(Store(store_root), run_id, sc.SelfCondParams(**params), new_run_id)


@materialize("cci://clustering/pending", name="train-self-conditioned-gan", tags=["gpu"],
             task_run_name="train self-conditioned gan {plan[run_id]}")
def train_selfcond_task(plan: dict) -> dict:
    """Train phase by phase, re-clustering on the discriminator's features; a retry or a
    re-run resumes from the last finished phase."""
    store, log = Store(plan["store"]), get_run_logger()
    cl = sc.train_selfcond(store, plan, producer=producer(), log=log.info)
    lin = LineageStore(store.lineage_url)
    annotate_asset(asset_for("clustering", plan["run_id"]), lin.get(cl["clustering_artifact_id"]))
    return cl


@task(name="write-self-conditioned-partitions", task_run_name="partitions {plan[run_id]}")
def selfcond_partitions_task(plan: dict, cl: dict) -> list[dict]:
    return cluster_run.write_partitions(Store(plan["store"]), plan, cl, [(cl["model_artifact_id"], "model")],
                                        producer=producer())


@task(name="finish-self-conditioned", task_run_name="finish {plan[run_id]}")
def finish_selfcond_task(plan: dict, cl: dict, parts: list[dict]) -> dict:
    return sc.finish_selfcond(Store(plan["store"]), plan, cl, parts)
