"""Where flows run: the Prefect API to report to and the Dask cluster to compute on."""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_dask import DaskTaskRunner

from flows.interrupt import CancellingDaskTaskRunner  # a failed or killed flow cancels what it submitted

TEMPORARY_SERVER_TIMEOUT_S = 120


class ServerStartError(RuntimeError, ValueError):
    """The temporary Prefect server did not come up (a ValueError: the CLI prints it as one line)."""


@contextlib.contextmanager
def prefect_api(announce=lambda msg: print(msg, file=sys.stderr), store_root: str | None = None) -> Iterator[str]:
    """Use ``PREFECT_API_URL`` when set; otherwise start one temporary local server, with its UI, and
    its database in the store (``<store>/.prefect/prefect.db`` for a local store: the store's UI lists
    the store's runs, and its history travels with it).

    The URL is exported to the environment so Dask worker processes report to the same
    API instead of each starting a temporary server of their own.
    """
    url = PREFECT_API_URL.value()
    if url:
        os.environ["PREFECT_API_URL"] = url
        yield url
        return
    announce("No PREFECT_API_URL set: starting a temporary Prefect server for this run "
             "(`cci server start` keeps one and a Dask cluster warm between commands)")
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS
    # Prefect's 20 s default is too short on a busy machine (it then raises with a traceback)
    timeout = max(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value(), TEMPORARY_SERVER_TIMEOUT_S)
    server = _own_session_server(store_database(store_root))
    try:
        server.start(timeout=timeout)
    except RuntimeError as exc:
        raise ServerStartError(f"the temporary Prefect server did not start within {timeout} s ({exc}); "
                               "start one that lasts with `cci server start`, or retry when the machine "
                               "is less busy") from None
    os.environ["PREFECT_API_URL"] = server.api_url
    announce(f"Watch it in the Prefect UI: {server.api_url.removesuffix('/api')}/runs (until the command ends)")
    # Stop the server at interpreter exit, not here: Prefect drains its log and event
    # workers in atexit hooks registered after this one (so they run first); stopping it
    # earlier leaves them retrying against a closed port for a minute or more.
    atexit.register(server.stop)
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        yield server.api_url


def store_database(store_root: str | None) -> str | None:
    """The SQLAlchemy URL of a local store's own Prefect database (None for an object store)."""
    if not store_root or "://" in str(store_root):
        return None
    from pathlib import Path
    folder = Path(store_root).resolve() / ".prefect"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{folder / 'prefect.db'}"


def _own_session_server(database: str | None):
    """Prefect's temporary server in a session of its own: Ctrl-C on a terminal (or ``timeout``) signals
    the whole process group, and a server killed with the command left Prefect retrying its logs and
    events against a closed port for minutes. The command stops it at exit (:func:`prefect_api`).
    Prefect turns the temporary server's UI off; this one serves it, and keeps ``database``."""
    import subprocess
    import types

    import prefect.server.api.server as prefect_server

    class OwnSessionServer(prefect_server.SubprocessASGIServer):
        def _run_uvicorn_command(self):
            def popen(args, env=None, **kwargs):
                env = {**(env or os.environ), "PREFECT_UI_ENABLED": "1",
                       "PREFECT_UI_API_URL": f"http://127.0.0.1:{self.port}/api"}
                env.pop("PREFECT__SERVER_EPHEMERAL", None)  # Prefect's ephemeral mode never mounts the UI
                if database:
                    env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database
                return subprocess.Popen(args, env=env, start_new_session=True, **kwargs)
            prefect_server.subprocess = types.SimpleNamespace(Popen=popen)  # for this one call
            try:
                return super()._run_uvicorn_command()
            finally:
                prefect_server.subprocess = subprocess
    return OwnSessionServer()


# Dask config for the workers of the clusters the CLI starts. Dask's sampling profiler (a thread
# in every worker walking all stacks every 10 ms) took about 5% of the workers' CPU on a 1M-image
# clustering; its only consumer is the dashboard's profile page.
WORKER_CONFIG = {"distributed.worker.profile.enabled": False}


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


def threads_per_worker(n_workers: int) -> int:
    """A LocalCluster's workers share the cores this process may use: one worker (``cci refine``'s
    single training task) gets them all, as many workers as cores get one each. A compute task
    gives torch, BLAS and numba its worker's threads (tasks.common.torch_compute)."""
    return max(1, len(os.sched_getaffinity(0)) // max(1, n_workers))


def dask_task_runner(address: str | None = None, n_workers: int | None = None) -> DaskTaskRunner:
    """A Dask task runner: an existing scheduler at ``address``, else a LocalCluster on loopback."""
    logging.getLogger("distributed").setLevel(logging.WARNING)  # scheduler chatter in this process
    if address:
        return CancellingDaskTaskRunner(address=address)
    n_workers = n_workers or default_workers()
    return CancellingDaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs={
        "n_workers": n_workers, "threads_per_worker": threads_per_worker(n_workers), "processes": True,
        "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0", "silence_logs": logging.WARNING})


def on_flow_cluster(subflow):
    """SUBFLOW with a task runner on the Dask cluster of the flow running now.

    A subflow otherwise runs its tasks on its own decorator's task runner (a thread pool in
    this process) whatever cluster its parent was given. Outside a flow on a Dask task
    runner, SUBFLOW is returned as it is.
    """
    from prefect.context import FlowRunContext
    ctx = FlowRunContext.get()
    runner = getattr(ctx, "task_runner", None) if ctx else None
    if not isinstance(runner, DaskTaskRunner):
        return subflow
    return subflow.with_options(task_runner=CancellingDaskTaskRunner(address=runner.client.scheduler.address))


def workers_have_gpu() -> bool:
    """True when the current flow runs on a Dask task runner whose workers advertise a ``GPU`` resource."""
    from prefect.context import FlowRunContext
    ctx = FlowRunContext.get()
    runner = getattr(ctx, "task_runner", None) if ctx else None
    try:
        client = getattr(runner, "client", None)  # DaskTaskRunner only
        if client is None:
            return False
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
    except Exception:  # not on a Dask task runner: nothing to annotate
        return False
    return any((w.get("resources") or {}).get("GPU", 0) >= 1 for w in workers)


@contextlib.contextmanager
def gpu_annotation(force: bool | None = None) -> Iterator[bool]:
    """Inside a flow on a Dask task runner: tasks submitted in this block ask for one ``GPU``
    resource when some worker advertises one (``dask worker --resources GPU=1``), or when
    ``force`` is True (``force=False`` never asks).

    On a cluster without GPU workers nothing is asked for, so the same tasks run on CPU
    instead of waiting for a resource nobody has. Yields whether GPUs were requested.
    """
    import dask
    if not (workers_have_gpu() if force is None else force):
        yield False
        return
    with dask.annotate(resources={"GPU": 1}):
        yield True
