"""Helpers every task module uses: who produced an artifact, its Prefect asset, and where
its Dask graphs run."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dask
from distributed import get_worker, worker_client
from prefect.assets import Asset, AssetProperties, add_asset_metadata
from prefect.runtime import flow_run, task_run

from cci_core.lineage import Artifact


def producer() -> dict:
    """The Prefect flow run and task run making the current artifact (empty outside Prefect)."""
    info = {}
    if flow_run.id:
        info.update(flow_run_id=str(flow_run.id), flow_name=flow_run.flow_name, flow_run_name=flow_run.name)
    if task_run.id:
        info.update(task_run_id=str(task_run.id), task_name=task_run.task_name)
    return info


def asset_for(kind: str, name: str, description: str = "") -> Asset:
    """The Prefect asset standing for a lineage artifact (one key per kind + name)."""
    safe = name.replace("@", "/v/").replace(" ", "_")
    return Asset(key=f"cci://{kind}/{safe}",
                 properties=AssetProperties(name=f"{kind} {name}", description=description or None))


def annotate_asset(asset: Asset, art: Artifact) -> None:
    """Attach the lineage record's id, URI and metrics to the asset (inside a materializing task)."""
    add_asset_metadata(asset, {"artifact_id": art.id, "uri": art.uri, "kind": art.kind,
                               "content_hash": art.content_hash, **{f"metric.{k}": v for k, v in art.metrics.items()},
                               "inputs": [i for i, _ in art.inputs]})


@contextlib.contextmanager
def cluster_compute() -> Iterator[None]:
    """Inside a task on a Dask worker: run the task's Dask graphs on the whole cluster.

    The task's thread secedes from the worker's pool while it waits, so a cluster of
    one-thread workers cannot deadlock on it. Outside a worker nothing changes.
    """
    try:
        get_worker()
    except ValueError:
        yield
        return
    with worker_client() as client, dask.config.set(scheduler=client.get):
        yield
