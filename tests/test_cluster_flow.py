"""`cci cluster` as a user runs it: the Prefect flow on a Dask scheduler and two worker
processes on loopback, equal to the in-process library run and to a one-worker cluster;
its Prefect artifacts; `cci predict`; bad input as one line."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cci_core.cluster import cluster_run as cr
from cci_core.ingest.ingest import ingest_local
from cci_core.store import runs
from cci_core.store.store import Store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("flowstore"))
    ingest_local(s, "builtin:digits", "digits")
    return s


def test_cli_cluster_on_two_dask_workers_equals_in_process_and_one_worker(store, dask_scheduler, run_cci,
                                                                          prefect_api):
    args = ["cluster", "digits", "--k", "10", "--components", "20", "--seed", "5", "--store", store.root, "--json"]
    res = run_cci(*args, "--dask-address", dask_scheduler, "--run-id", "two-workers")
    assert res.returncode == 0, res.stderr[-3000:]
    two = json.loads(res.stdout)
    assert two["status"] == "complete" and two["n_clusters"] == 10 and len(two["partitions"]) == 10
    res = run_cci(*args, "--workers", "1", "--run-id", "one-worker")
    assert res.returncode == 0, res.stderr[-3000:]
    one = json.loads(res.stdout)
    local = cr.run_local(store, "digits", cr.ClusterParams(k=10, n_components=20, seed=5))

    lab_two = cr.run_labels(runs.read_run(store, "two-workers"))
    assert np.array_equal(lab_two, cr.run_labels(runs.read_run(store, "one-worker")))
    assert np.array_equal(lab_two, cr.run_labels(local))
    assert [p["count"] for p in two["partitions"]] == [p["count"] for p in one["partitions"]]
    assert two["metrics"]["acc"] > 0.7
    # the clustering was made inside the flow: its lineage names the flow run and the task
    from cci_core.store.lineage import LineageStore
    art = LineageStore(store.lineage_url).get(two["clustering_artifact_id"])
    assert art.producer["flow_name"] == "cci-cluster" and art.producer["task_name"] == "cluster-embeddings"

    # what the operator sees in Prefect: metrics and sizes tables, pictures inline
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    with get_client(sync_client=True) as client:
        arts = {a.key: a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["cluster-metrics-digits", "cluster-sizes-digits", "cluster-pictures-digits"])))}
    assert set(arts) == {"cluster-metrics-digits", "cluster-sizes-digits", "cluster-pictures-digits"}
    assert "nmi" in str(arts["cluster-metrics-digits"].data)
    assert "data:image/png;base64," in str(arts["cluster-pictures-digits"].data)

    res = run_cci("predict", "two-workers", "--corpus", "digits", "--rows", "0:300", "--store", store.root, "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    pred = json.loads(res.stdout)
    assert [p["cluster"] for p in pred] == lab_two[:300].tolist()


def test_cli_cluster_bad_input_is_one_line(store, run_cci):
    for args, message in [(["--k", "1"], "k must be >= 2"),
                          (["--algorithm", "kmedoids"], "--algorithm 'kmedoids'")]:
        res = run_cci("cluster", "digits", "--store", store.root, *args)
        assert res.returncode == 1 and message in res.stderr, res.stderr
        assert "Traceback" not in res.stderr and "Prefect server" not in res.stderr
    res = run_cci("cluster", "nope", "--store", store.root)
    assert res.returncode == 1 and "no corpus named 'nope'" in res.stderr
    res = run_cci("predict", "no-such-run", "builtin:digits", "--store", store.root)
    assert res.returncode == 1 and "no run 'no-such-run'" in res.stderr
