"""Torch in a task on a Dask worker uses every core of the host, whatever the number of
workers (so the weights do not depend on the cluster's layout), not the one thread Dask's
OMP_NUM_THREADS=1 leaves it (real LocalCluster on loopback). And UMAP's numba kernels leave
torch's thread count as it was."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from distributed import Client, LocalCluster

from tasks.common import torch_compute

CORES = len(os.sched_getaffinity(0))


def _threads_inside() -> tuple[int, int, int]:
    import torch
    before = torch.get_num_threads()
    with torch_compute():
        inside = torch.get_num_threads()
    return before, inside, torch.get_num_threads()


@pytest.mark.parametrize("n_workers", [1, 2])
def test_a_worker_task_gets_every_core_of_the_host(n_workers):
    if CORES < 2:
        pytest.skip("needs at least 2 cores to tell one thread from every core")
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        before, inside, after = client.submit(_threads_inside, pure=False).result()
    assert before == 1  # what Dask's OMP_NUM_THREADS=1 gives torch
    assert inside == CORES
    assert after == before


def test_outside_a_worker_nothing_changes():
    import torch
    before = torch.get_num_threads()
    with torch_compute():
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
