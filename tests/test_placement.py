"""Work goes where the user sends it. With a scheduler and two worker processes on loopback
(conftest's ``dask_scheduler``), the scheduler's own task stream shows the Prefect task runs of
the cluster and palette flows, and the Dask blocks inside them (PCA moments, the Zarr reads, the
palette histogram), executed on those workers: had they run in this (the
client's) process the scheduler would never have seen them. Subflows run on the parent's
cluster. An address with nothing listening fails the flow before any of its work runs anywhere."""
from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import dask
import pytest
from distributed import Client, get_task_stream
from distributed.utils import key_split

from cci_core.cluster.records import ClusterParams
from flows.runtime import dask_task_runner
from flows.settings import ClusterSettings, PaletteSettings


@pytest.fixture(scope="module")
def store(digits28_store):
    return digits28_store("placement")


@contextlib.contextmanager
def scheduler_records(address: str):
    """Yield ``(placed, workers)``; after the block ``placed`` maps each key prefix the scheduler
    ran meanwhile (Prefect task runs are named by their function) to the workers that ran it."""
    with Client(address, set_as_default=False, timeout=30) as client:
        workers = set(client.scheduler_info(n_workers=-1)["workers"])
        placed: dict[str, set[str]] = {}
        with get_task_stream(client=client) as stream:
            yield placed, workers
        for rec in stream.data:
            placed.setdefault(key_split(rec["key"]), set()).add(rec["worker"])


def assert_on_workers(placed: dict, workers: set, prefixes: tuple[str, ...]) -> None:
    for prefix in prefixes:
        assert placed.get(prefix), f"the scheduler never ran {prefix!r}: it ran {sorted(placed)}"
        assert placed[prefix] <= workers, f"{prefix} ran on {placed[prefix]}, not on the workers {workers}"


def test_cluster_flow_runs_pca_and_kmeans_on_the_workers(store, dask_scheduler, prefect_api):
    from flows.cluster import cluster_flow
    with scheduler_records(dask_scheduler) as (placed, workers):
        out = cluster_flow.with_options(task_runner=dask_task_runner(dask_scheduler))(ClusterSettings(
            "d28", store_root=str(store.root), params=ClusterParams(k="9:10", n_components=20, seed=5), run_id="placed"))
    assert out["status"] == "complete" and out["n_clusters"] == out["k"]
    # the Prefect task runs (keys named after their functions) ...
    assert_on_workers(placed, workers, ("fit_embeddings_task", "choose_k_task", "cluster_task",
                                        "partitions_task", "pictures_task"))
    # ... and the Dask graphs they ran through the worker's client: the PCA moments, and the reads of
    # the corpus and of the embeddings (which the k-means step then clusters in its own worker when
    # they fit the memory budget, cluster_run.space_in_memory; the passes on Dask above it are
    # test_cluster_run's)
    assert_on_workers(placed, workers, ("block_moments", "from-zarr"))


def test_palette_flow_runs_on_the_workers(store, dask_scheduler, prefect_api):
    from flows.palette import palette_flow
    with scheduler_records(dask_scheduler) as (placed, workers):
        pal = palette_flow.with_options(task_runner=dask_task_runner(dask_scheduler))(
            PaletteSettings("d28", 4, store_root=str(store.root)))
    assert pal["k"] == 4 and pal["n_pixels"] == 1797 * 28 * 28
    assert_on_workers(placed, workers, ("learn_palette_task", "gray_hist"))


def test_subflows_run_on_the_parent_flows_cluster(store, dask_scheduler, prefect_api):
    """A subflow runs its tasks on its own decorator's runner (a thread pool here) unless the
    pipeline hands it the parent's cluster with ``on_flow_cluster``."""
    from prefect import flow

    from flows.palette import palette_flow
    from flows.runtime import on_flow_cluster

    @flow
    def parent(colors: int, same_cluster: bool) -> dict:
        sub = on_flow_cluster(palette_flow) if same_cluster else palette_flow
        return sub(PaletteSettings("d28", colors, store_root=str(store.root)))

    for colors, same_cluster in ((3, False), (5, True)):
        with scheduler_records(dask_scheduler) as (placed, workers):
            out = parent.with_options(task_runner=dask_task_runner(dask_scheduler))(colors, same_cluster)
        assert out["k"] == colors
        if same_cluster:
            assert_on_workers(placed, workers, ("learn_palette_task", "gray_hist"))
        else:
            assert "learn_palette_task" not in placed


def test_nothing_listening_fails_and_nothing_runs(store, prefect_api):
    from flows.cluster import cluster_flow
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}), pytest.raises(OSError):
        cluster_flow.with_options(task_runner=dask_task_runner(address))(ClusterSettings(
            "d28", store_root=str(store.root), params=ClusterParams(k=10, n_components=20), run_id="nowhere"))
    assert not (Path(store.run_dir("nowhere")) / "embeddings.zarr").exists()
