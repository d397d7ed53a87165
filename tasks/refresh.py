"""Prefect tasks around :mod:`cci_core.refresh.refresh_run`: assign the new images of a corpus with
a run's classifier, then retrain the clusters that changed. Both are model work, tagged ``gpu``."""
from __future__ import annotations

from prefect import task

from cci_core.refresh import refresh_run
from cci_core.store.store import Store
from tasks.common import producer


@task(name="assign-new-images", tags=["gpu"], task_run_name="assign new images to {run_id}")
def assign_new_task(store_root: str, run_id: str, version: int, retrain_threshold: float,
                    low_confidence: float) -> dict:
    return refresh_run.assign_new(Store(store_root), run_id, version, retrain_threshold, low_confidence,
                                  producer=producer())


@task(name="retrain-changed-clusters", tags=["gpu"], task_run_name="retrain {run_id} clusters {changed}")
def retrain_task(store_root: str, run_id: str, changed: list[int]) -> dict:
    return refresh_run.retrain_changed(Store(store_root), run_id, changed, producer=producer())
