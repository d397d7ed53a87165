"""Torch, BLAS and numba in a task use its Dask worker's own threads (or the count asked for),
never the host's core count (real LocalClusters on loopback); a LocalCluster's workers share the
cores; UMAP's numba kernels leave torch's thread count as it was."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from distributed import Client, LocalCluster

from flows.runtime import threads_per_worker
from tasks.common import torch_compute

CORES = len(os.sched_getaffinity(0))


def _threads_inside(threads=None) -> tuple[int, int, int, int]:
    import torch
    from threadpoolctl import threadpool_info
    before = torch.get_num_threads()
    with torch_compute(threads) as n:
        inside = torch.get_num_threads()
        blas = max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")
        assert n == inside
    return before, inside, blas, torch.get_num_threads()


@pytest.mark.parametrize("n_workers, threads, expected", [(1, None, CORES), (2, None, 1), (2, 2, 2)])
def test_a_worker_task_uses_its_workers_threads(n_workers, threads, expected):
    if CORES < 2:
        pytest.skip("needs at least 2 cores to tell one thread from every core")
    with LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker(n_workers), processes=True,
                      host="127.0.0.1", dashboard_address=None) as cluster, Client(cluster) as client:
        before, inside, blas, after = client.submit(_threads_inside, threads, pure=False).result()
    assert before == 1  # what Dask's OMP_NUM_THREADS=1 gives torch
    assert (inside, blas) == (expected, expected)
    assert after == before


def test_local_cluster_workers_share_the_cores():
    assert threads_per_worker(1) == CORES
    assert threads_per_worker(CORES) == 1
    assert threads_per_worker(4 * CORES) == 1


def test_outside_a_worker_nothing_changes_unless_asked():
    import torch
    before = torch.get_num_threads()
    with torch_compute() as n:
        assert torch.get_num_threads() == before == n
    with torch_compute(3) as n:
        assert torch.get_num_threads() == n == 3
    assert torch.get_num_threads() == before


_UMAP_THEN_THREADS = """
import numpy as np, torch
from cci_core.cluster.manifold import umap_embed
before = torch.get_num_threads()
umap_embed(np.random.default_rng(0).random((300, 8)), n_components=2, n_neighbors=10, seed=0)
print(before, torch.get_num_threads())
"""


def test_umap_leaves_torch_threads_as_they_were():
    # numba's parallel kernels change the libgomp thread count they share with torch (seen with
    # OMP_NUM_THREADS=1, as the test command and Dask workers set it); a fresh process, because
    # numba does it when its thread pool first starts
    if CORES < 2:
        pytest.skip("needs at least 2 cores for numba to want more than torch's one thread")
    out = subprocess.run([sys.executable, "-c", _UMAP_THEN_THREADS], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["1", "1"], out.stdout
