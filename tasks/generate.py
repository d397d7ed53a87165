"""Prefect task around :mod:`cci_core.generate.generate_run`: publish a generated dataset version."""
from __future__ import annotations

from prefect import get_run_logger
from prefect.assets import materialize

from cci_core.generate import generate_run
from cci_core.store.lineage import LineageStore
from cci_core.store.store import Store
from tasks.common import annotate_asset, asset_for, producer, progress_artifact


@materialize("cci://dataset/pending", name="generate-and-publish", tags=["gpu"],
             task_run_name="generate {dataset} from {run_id}")
def generate_task(store_root: str, run_id: str, dataset: str, per_cluster: int, threshold: float, seed: int,
                  models: str | None) -> dict:
    store = Store(store_root)
    out = generate_run.generate_dataset(store, run_id, dataset, per_cluster=per_cluster, threshold=threshold,
                                        seed=seed, models=models, producer=producer(),
                                        log=get_run_logger().info,
                                        progress=progress_artifact(f"generate {dataset} from {run_id}"))
    annotate_asset(asset_for("dataset", dataset), LineageStore(store.lineage_url).get(out["artifact_id"]))
    return out
