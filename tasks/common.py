"""Helpers every task module uses: who produced an artifact, its Prefect asset, where its
Dask graphs run, how its torch code gets its worker's threads and memory at full speed, and a
progress artifact a pure ``cci_core`` loop can update."""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator

import dask
from distributed import get_worker, worker_client
from prefect.assets import Asset, AssetProperties, add_asset_metadata
from prefect.runtime import flow_run, task_run

from cci_core.common.threads import compute_threads
from cci_core.store.lineage import Artifact
from tasks.cancel import raise_if_cancelled


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


# glibc mallopt parameters: free() gives memory back to the OS above the trim threshold, and
# blocks above the mmap threshold are mapped and unmapped one by one
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _mallopt(param: int, value: int) -> None:
    import ctypes
    try:
        ctypes.CDLL("libc.so.6").mallopt(param, value)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def _worker():
    """The Dask worker running this code, or None."""
    try:
        return get_worker()
    except ValueError:
        return None


@contextlib.contextmanager
def torch_compute(threads: int | None = None) -> Iterator[int]:
    """Inside a compute task: torch, BLAS and numba use ``threads`` threads, else the Dask worker's own
    (its ``nthreads``), never the host's core count (several workers on one host would oversubscribe
    it by design); yields torch's count.

    Dask starts worker processes with ``OMP_NUM_THREADS=1`` (and ``OPENBLAS``/``MKL`` at 1) and
    ``MALLOC_TRIM_THRESHOLD_=65536`` (right for many small tasks side by side). A training task
    gets its worker's threads instead (``cci refine`` starts one worker with every core; a
    shared cluster gives each worker its share), and glibc keeps freed memory up to 256 MiB
    (blocks up to 32 MiB from the heap) while the block runs: in a worker with the trim threshold
    at 64 KiB every batch-sized tensor was mapped and unmapped from the OS, which halved
    ``cci refine``'s contrastive stage (1,050 vs 2,300 images/s). CPU results depend on the
    thread count, so callers record the yielded count with the result. Everything comes back
    afterwards. Outside a worker with ``threads`` None nothing changes.
    """
    import torch
    worker = _worker()
    n = int(threads) if threads is not None else worker.state.nthreads if worker is not None else None
    if n is None:
        yield torch.get_num_threads()
        return
    with compute_threads(n):
        if worker is not None:
            _mallopt(_M_MMAP_THRESHOLD, 32 << 20)
            _mallopt(_M_TRIM_THRESHOLD, 256 << 20)
        try:
            yield n
        finally:
            if worker is not None:
                _mallopt(_M_TRIM_THRESHOLD, int(os.environ.get("MALLOC_TRIM_THRESHOLD_", 128 << 10)))
                _mallopt(_M_MMAP_THRESHOLD, 128 << 10)


def progress_artifact(description: str, key: str | None = None,
                      min_seconds: float = 2.0) -> Callable[[float, float, str], None]:
    """A ``progress(done, total, note)`` callable for ``cci_core`` loops, shown in the Prefect UI
    as one progress artifact of the current flow run (created on the first call).

    Works in a task on a Dask worker too (the worker reports to ``PREFECT_API_URL``). Updates
    come at most every ``min_seconds`` (and always at the end); a failing update is dropped:
    progress display must never fail a run.
    """
    from prefect.artifacts import create_progress_artifact, update_progress_artifact
    state = {"id": None, "at": 0.0}

    def progress(done: float, total: float, note: str = "") -> None:
        raise_if_cancelled()  # a loop reporting progress stops here once its command is gone
        pct = max(0.0, min(100.0, 100.0 * done / total)) if total else 0.0
        now = time.monotonic()
        if state["id"] is not None and now - state["at"] < min_seconds and pct < 100.0:
            return
        text = f"{description}: {note}" if note else description
        try:
            if state["id"] is None:
                state["id"] = create_progress_artifact(pct, key=key, description=text)
            else:
                update_progress_artifact(state["id"], pct, description=text)
        except Exception:  # noqa: BLE001 - see the docstring
            return
        state["at"] = now
    return progress
