"""Prefect tasks around :mod:`cci_core.refine.refine_run`. Training is tagged ``gpu``: a Prefect
concurrency limit on that tag (``prefect concurrency-limit create gpu N``) holds GPU work
to the number of GPUs."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.assets import materialize

from cci_core.cluster import cluster_run
from cci_core.refine import refine_run
from cci_core.store.lineage import LineageStore
from cci_core.store.store import Store
from tasks.common import annotate_asset, asset_for, producer, progress_artifact, torch_compute


@task(name="start-refine", task_run_name="start refine {run_id}")
def start_refine_task(store_root: str, run_id: str, options: dict, new_run_id: str | None) -> dict:
    return refine_run.start_refine(Store(store_root), run_id, refine_run.config_from_options(options), new_run_id)


@materialize("cci://classifier/pending", name="train-cci-classifier", tags=["gpu"],
             task_run_name="train classifier {plan[run_id]}")
def refine_task(plan: dict) -> dict:
    store, log = Store(plan["store"]), get_run_logger()
    progress = progress_artifact(f"refine {plan['parent_run']} into {plan['run_id']}")
    progress(0, 1, "loading the corpus")
    with torch_compute(plan["params"].get("threads")):
        out = refine_run.refine_step(store, plan, log=log.info, producer=producer(), progress=progress)
    lin = LineageStore(store.lineage_url)
    annotate_asset(asset_for("classifier", plan["run_id"]), lin.get(out["classifier_artifact_id"]))
    annotate_asset(asset_for("clustering", plan["run_id"]), lin.get(out["clustering_artifact_id"]))
    return out


@task(name="write-refined-partitions", task_run_name="partitions {plan[run_id]}")
def refined_partitions_task(plan: dict, cl: dict) -> list[dict]:
    return cluster_run.write_partitions(Store(plan["store"]), plan, cl,
                                        [(cl["classifier_artifact_id"], "classifier")], producer=producer())


@task(name="draw-refine-pictures", task_run_name="pictures {plan[run_id]}")
def refine_pictures_task(plan: dict, cl: dict) -> list[str]:
    with torch_compute(plan["params"].get("threads")):
        return refine_run.write_refine_pictures(Store(plan["store"]), plan, cl)
