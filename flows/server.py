"""A warm Prefect server and Dask cluster kept between `cci` commands (`cci server start|stop|status`).

Without it every command starts a temporary Prefect server (9-12 s here) and a LocalCluster whose
workers import the libraries again. :func:`start` runs, in the background and on 127.0.0.1 only,

- ``prefect server start`` on a free port, with ``PREFECT_API_URL`` exported *before* it starts (a
  UI served on a port other than 4200 otherwise calls port 4200 for its API), and
- this module as a process holding a ``LocalCluster`` (scheduler + worker processes) whose
  workers report to that server and have the pipeline's libraries imported already,

and records both addresses and process ids in ``<store>/.cci-server.json``. A later command on
the same store that is given neither ``PREFECT_API_URL`` nor ``--dask-address`` uses them
(:func:`warm`). :func:`stop` ends both process groups and removes the file.

The record, the address file and the log are files of this machine, so a store on object storage
(``s3://...``) has no warm server: :func:`start` refuses one, and commands on such a store run on
``PREFECT_API_URL`` and ``--dask-address`` (or a temporary server and a LocalCluster).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

STATE_FILE = ".cci-server.json"
LOG_FILE = ".cci-server.log"
START_TIMEOUT_S = 180.0


class ServerError(ValueError):
    """The warm server cannot be started, reached or stopped (one line for the CLI)."""


def is_remote(store_root: str | Path | None) -> bool:
    """True for a store on object storage (a URL): it has no warm server (local files only)."""
    from cci_core.store.fs import is_url  # lazy: fsspec and pandas are not needed to start the CLI
    return store_root is not None and is_url(store_root)


def state_path(store_root: str | Path) -> Path:
    return Path(store_root) / STATE_FILE


def _alive(pid: int) -> bool:
    from cci_core.store.store import pid_alive
    if not pid_alive(pid):
        return False
    try:  # a zombie waits for its parent to reap it: it serves nothing
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def _recorded(store_root: str | Path) -> dict | None:
    """The state file's content as written by :func:`start`, or None when absent or unreadable."""
    if is_remote(store_root):
        return None
    try:
        return json.loads(state_path(store_root).read_text())
    except (OSError, ValueError):
        return None


def read_state(store_root: str | Path) -> dict | None:
    """The warm server recorded for this store, or None when there is none or its processes are gone."""
    state = _recorded(store_root)
    if state is None or not all(_alive(int(pid)) for pid in state.get("pids", {}).values()):
        return None
    return state


def warm(store_root: str | Path | None) -> dict | None:
    """The warm server a command on ``store_root`` should use: only when the environment names no
    Prefect API (the caller checks ``--dask-address``), so an explicit choice always wins."""
    if store_root is None or os.environ.get("PREFECT_API_URL"):
        return None
    return read_state(store_root)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(api_url: str) -> bool:
    import httpx
    try:
        return httpx.get(f"{api_url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _kill_group(pid: int, timeout: float = 30.0) -> None:
    """SIGTERM the process group led by ``pid`` (started with a new session), SIGKILL after ``timeout``."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        end = time.monotonic() + wait
        while time.monotonic() < end:
            if not _alive(pid):
                return
            time.sleep(0.2)


def start(store_root: str | Path, workers: int, announce=print) -> dict:
    """Start the Prefect server and the Dask cluster for ``store_root``; returns the recorded state.

    Raises :class:`ServerError` when one is running already or either fails to come up (both are
    then stopped again, and nothing is recorded).
    """
    if is_remote(store_root):
        raise ServerError(f"store {store_root} is on object storage: a warm server is recorded in a local file "
                          "beside a local store only; start `prefect server start` and `dask scheduler` yourself, "
                          "then give later commands PREFECT_API_URL and --dask-address (or $CCI_DASK_ADDRESS)")
    root = Path(store_root)
    root.mkdir(parents=True, exist_ok=True)
    if (running := read_state(root)) is not None:
        raise ServerError(f"a warm server for {root} is running already (Prefect {running['api_url']}, "
                          f"Dask {running['dask_address']}); `cci server stop --store {root}` ends it")
    from flows.runtime import store_database
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    # the port trap: the UI reads its API address from these when the server starts
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_UI_API_URL": api_url,
           "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(port),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
           # the store's own database: its UI lists this store's runs, and the history moves with it
           "PREFECT_SERVER_DATABASE_CONNECTION_URL": store_database(root)}
    address_file = root / ".cci-dask-address"
    address_file.unlink(missing_ok=True)
    log = open(root / LOG_FILE, "ab")  # noqa: SIM115 - the children keep it
    bindir = Path(sys.executable).parent
    t0 = time.monotonic()
    procs = {"prefect": subprocess.Popen([str(bindir / "prefect"), "server", "start", "--host", "127.0.0.1",
                                          "--port", str(port)], env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True),
             "dask": subprocess.Popen([sys.executable, "-m", "flows.server", str(workers), str(address_file)],
                                      env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True, cwd=str(Path(__file__).resolve().parents[1]))}
    log.close()
    try:
        api_ok = address = None
        while time.monotonic() - t0 < START_TIMEOUT_S:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise ServerError(f"the {name} process ended at start-up (exit {proc.returncode}); "
                                      f"see {root / LOG_FILE}")
            api_ok = api_ok or _healthy(api_url)
            address = address or (address_file.read_text().strip() if address_file.exists() else None)
            if api_ok and address:
                break
            time.sleep(0.5)
        else:
            raise ServerError(f"the warm server did not come up within {START_TIMEOUT_S:.0f} s "
                              f"(Prefect {'up' if api_ok else 'down'}, Dask {'up' if address else 'down'}); "
                              f"see {root / LOG_FILE}")
    except BaseException:
        for proc in procs.values():
            _kill_group(proc.pid)
        raise
    state = {"api_url": api_url, "ui_url": api_url.removesuffix("/api"), "dask_address": address,
             "workers": workers, "pids": {name: proc.pid for name, proc in procs.items()},
             "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "start_seconds": round(time.monotonic() - t0, 2),
             "log": str(root / LOG_FILE)}
    from cci_core.store.store import atomic_write_json  # lazy: pandas is not needed to start the CLI
    atomic_write_json(state_path(root), state)
    return state


def stop(store_root: str | Path) -> dict | None:
    """Stop the warm server of ``store_root`` (both process groups) and forget it; None if there was none."""
    state = _recorded(store_root)
    if state is None:
        return None
    for pid in state.get("pids", {}).values():  # (a URL store records none: state is None above)
        _kill_group(int(pid))
    state_path(store_root).unlink(missing_ok=True)
    (Path(store_root) / ".cci-dask-address").unlink(missing_ok=True)
    return state


def status(store_root: str | Path) -> dict | None:
    """The recorded state with what answers now (``api_ok``, ``dask_ok``), or None."""
    state = read_state(store_root)
    if state is None:
        return None
    from flows.preflight import PreflightError, check_dask_address
    state["api_ok"] = _healthy(state["api_url"])
    try:
        check_dask_address(state["dask_address"])
        state["dask_ok"] = True
    except PreflightError:
        state["dask_ok"] = False
    return state


# -- the process that holds the Dask cluster -------------------------------------------------
WARM_IMPORTS = ("prefect", "tasks.common", "tasks.ingest", "tasks.cluster", "cci_core.cluster.cluster_run")


def dask_setup(worker=None) -> None:
    """Worker preload: import what the tasks need once, at start, not in each command's first task."""
    import importlib
    for name in WARM_IMPORTS:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a failed warm-up only costs the time it would have saved
            logging.getLogger("distributed").warning("warm import of %s failed", name)


def _hold(workers: int, address_file: Path) -> None:
    import dask
    from distributed import LocalCluster
    stopping = {"now": False}

    def on_signal(*_):
        stopping["now"] = True
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    from flows.runtime import WORKER_CONFIG, threads_per_worker
    with dask.config.set({"distributed.worker.preload": ["flows.quietlog", "flows.server"], **WORKER_CONFIG}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker(workers), processes=True,
                               host="127.0.0.1",
                               dashboard_address="127.0.0.1:0", silence_logs=logging.WARNING)
    tmp = address_file.with_suffix(".tmp")
    tmp.write_text(cluster.scheduler_address)
    tmp.replace(address_file)
    try:
        while not stopping["now"]:
            time.sleep(0.5)
    finally:
        cluster.close(timeout=20)


if __name__ == "__main__":
    _hold(int(sys.argv[1]), Path(sys.argv[2]))
