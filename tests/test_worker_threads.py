"""Torch in a task on a Dask worker uses every core of the host, whatever the number of
workers (so the weights do not depend on the cluster's layout), not the one thread Dask's
OMP_NUM_THREADS=1 leaves it (real LocalCluster on loopback)."""
from __future__ import annotations

import os

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
        pytest.skip("needs at least 2 cores to tell one thread from the share")
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
