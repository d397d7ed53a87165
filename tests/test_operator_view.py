"""What an operator sees in Prefect while a refine runs: a flow run named from its inputs and
tagged with corpus, run and stage, task runs named by what they work on, and a progress
artifact that advances round by round while the training runs in a task on a Dask worker
(read through the API as the UI does, while the run is in flight). Also the cluster flow's
readable artifacts: rounded figures, labelled montages, links, the corpus upstream of the
clustering asset.

Real parts: the session's Prefect API, a Dask scheduler and two worker processes on loopback.
"""
from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from cci_core.cluster import cluster_run as cr
from cci_core.store import runs

TINY = {"rounds": 2, "warmup_steps": 60, "steps": 240, "round_epochs": 1000, "batch_size": 32, "width": 8, "seed": 1,
        "start": "given", "recluster": "kmeans"}


@pytest.fixture(scope="module")
def store(digits28_store):
    return digits28_store("operator", run1=cr.ClusterParams(k=4, n_components=10))


def _progress_artifacts(api: str, flow_run_id: str) -> list[dict]:
    r = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]},
                                                                  "type": {"any_": ["progress"]}}}, timeout=30)
    return r.json()


def _flow_runs(api: str, name: str) -> list[dict]:
    return httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"name": {"any_": [name]}}}, timeout=30).json()


def test_refine_is_named_tagged_and_shows_progress_while_running(store, dask_scheduler, prefect_api):
    from cci_core.refine.refine_run import config_from_options
    from flows.naming import tagged
    from flows.refine import refine_flow
    from flows.runtime import dask_task_runner
    from flows.settings import RefineSettings

    seen: list[tuple[float, str]] = []
    stop = threading.Event()

    def watch():  # what the UI's flow run page polls, while the run is in flight
        run_id = None
        while not stop.is_set():
            if run_id is None:
                running = [r for r in _flow_runs(prefect_api, "refine run1") if r["state_type"] == "RUNNING"]
                run_id = running[0]["id"] if running else None
            if run_id is not None:
                for a in _progress_artifacts(prefect_api, run_id):
                    if "round" in (a["description"] or "") and (a["data"], a["description"]) not in seen:
                        seen.append((a["data"], a["description"]))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    flow = refine_flow.with_options(task_runner=dask_task_runner(dask_scheduler))
    settings = RefineSettings("run1", store_root=str(store.root), config=config_from_options(TINY),
                              new_run_id="run1-ref")
    try:
        with tagged(flow, settings):
            state = flow(settings, return_state=True)
    finally:
        stop.set()
        watcher.join(timeout=30)
    assert state.is_completed(), state
    fr = httpx.get(f"{prefect_api}/flow_runs/{state.state_details.flow_run_id}", timeout=30).json()
    assert fr["name"] == "refine run1"
    assert {"cci", "stage:refine", "corpus:d28", "run:run1", f"store:{store.root}"} <= set(fr["tags"]), fr["tags"]

    # progress advanced while the run was in flight, from the worker running the training task
    values = [v for v, _ in seen]
    assert len(set(values)) >= 3 and values == sorted(values), seen
    assert any("round 1/2" in d for _, d in seen) and any("step" in d for _, d in seen), seen
    final = _progress_artifacts(prefect_api, fr["id"])
    assert any(a["data"] == 100.0 and "round 2/2" in a["description"] for a in final), final

    tasks = httpx.post(f"{prefect_api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [fr["id"]]}}},
                       timeout=30).json()
    names = {t["name"] for t in tasks}
    assert "train classifier run1-ref" in names and "partitions run1-ref" in names, names
    train = next(t for t in tasks if t["name"] == "train classifier run1-ref")
    assert "cci" in train["tags"] and "gpu" in train["tags"]


def test_cluster_artifacts_are_readable(store, dask_scheduler, prefect_api):
    from cci_core.cluster.records import ClusterParams
    from flows.cluster import cluster_flow
    from flows.naming import tagged
    from flows.runtime import dask_task_runner
    from flows.settings import ClusterSettings

    flow = cluster_flow.with_options(task_runner=dask_task_runner(dask_scheduler))
    settings = ClusterSettings("d28", store_root=str(store.root), params=ClusterParams(k=3, n_components=8),
                               run_id="run-read")
    with tagged(flow, settings):
        state = flow(settings, return_state=True)
    assert state.is_completed(), state
    fr = httpx.get(f"{prefect_api}/flow_runs/{state.state_details.flow_run_id}", timeout=30).json()
    assert fr["name"] == "cluster d28 k=3"
    assert {"cci", "stage:cluster", "corpus:d28", "run:run-read", f"store:{store.root}"} <= set(fr["tags"]), fr["tags"]
    arts = {a["key"]: a for a in httpx.post(f"{prefect_api}/artifacts/filter", json={
        "artifacts": {"flow_run_id": {"any_": [fr["id"]]}}}, timeout=30).json() if a.get("key")}
    import json
    metrics = json.loads(arts["cluster-metrics-d28"]["data"])
    for row in metrics:  # 4 significant digits at most
        if isinstance(row["value"], float):
            digits = f"{row['value']:.10g}".lstrip("-0.").replace(".", "").rstrip("0")
            assert len(digits.split("e")[0]) <= 4, row
    pictures = arts["cluster-pictures-d28"]["data"]
    assert "](file://" in pictures  # the run folder is a link
    sizes = arts["cluster-sizes-d28"]["data"]
    assert "file://" in sizes and "cluster-000.parquet" in sizes  # partitions are links

    # the montage rows carry the cluster id and size: the label strip is not blank
    n = runs.read_run(store, "run-read")["params"]["montage_size"]
    montage = np.asarray(Image.open(next(p for p in state.result()["pictures"] if p.endswith("clusters.png"))))
    strip = montage[:, :montage.shape[1] - 2 * (n * 30 + 2)]  # left of the 28-pixel images, scale 2
    assert strip.shape[1] > 20 and (strip < 100).any() and (strip == 255).mean() > 0.5

    # the clustering's asset event names the corpus upstream
    ev = httpx.post(f"{prefect_api}/events/filter", json={"filter": {
        "event": {"name": ["prefect.asset.materialization.succeeded"]},
        "resource": {"id": ["cci://clustering/run-read"]}}}, timeout=30).json()["events"]
    assert ev, "no materialization event for the clustering asset"
    related = {r["prefect.resource.id"]: r.get("prefect.resource.role") for e in ev for r in e["related"]}
    assert related.get("cci://corpus/d28") == "asset", related
