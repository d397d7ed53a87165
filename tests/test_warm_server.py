"""`cci server start|status|stop` through the real console script: a Prefect server and a Dask
cluster on 127.0.0.1 that a later command on the same store uses instead of starting its own,
and nothing left running after `stop` (stopped by the test itself if it fails half-way)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

CCI = str(Path(sys.executable).parent / "cci")


@pytest.fixture
def env(tmp_path):
    """The user's environment without a Prefect API (the harness may have exported one), with a
    Prefect home of its own so the server's database is this test's."""
    e = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "CCI_DASK_ADDRESS")}
    return {**e, "PREFECT_HOME": str(tmp_path / "prefect-home"), "COLUMNS": "200"}


def _cci(env, *args, timeout=600):
    return subprocess.run([CCI, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)


def _listening(url: str) -> bool:
    parts = urlsplit(url)
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((parts.hostname, parts.port)) == 0


def test_warm_server_is_used_then_stopped(tmp_path, env):
    from cci_core.ingest.ingest import ingest_local
    from cci_core.store.store import Store
    from flows.server import _alive, read_state
    store = Store(tmp_path / "store")
    ingest_local(store, "builtin:digits", "d28", size=(28, 28))
    try:
        t0 = time.time()
        res = _cci(env, "server", "start", "--store", store.root, "--workers", 1, "--json")
        wall = time.time() - t0
        assert res.returncode == 0, res.stderr[-3000:]
        state = json.loads(res.stdout)
        # "ready in" counts from the command's start (imports included), not from the servers' spawn
        ready = state.pop("command_seconds")
        assert state["start_seconds"] < ready <= wall + 0.5, (state["start_seconds"], ready, wall)
        assert state == read_state(store.root) and set(state["pids"]) == {"prefect", "dask"}
        assert urlsplit(state["api_url"]).hostname == "127.0.0.1"
        assert urlsplit(state["dask_address"]).hostname == "127.0.0.1"
        assert _cci(env, "server", "status", "--store", store.root).returncode == 0

        res = _cci(env, "cluster", "d28", "-k", 3, "--components", 10, "--store", store.root, "--json")
        assert res.returncode == 0, res.stderr[-3000:]
        assert "Using the warm server of this store" in res.stderr
        assert "temporary Prefect server" not in res.stderr  # no server of its own
        summary = json.loads(res.stdout)
        # the run is recorded by the warm server, and its tasks ran on the warm cluster's worker
        runs = httpx.post(f"{state['api_url']}/flow_runs/filter",
                          json={"flow_runs": {"name": {"any_": ["cluster d28 k=3"]}}}, timeout=10).json()
        assert [r["state_type"] for r in runs] == ["COMPLETED"]
        from distributed import Client
        with Client(state["dask_address"], timeout=30) as client:
            assert len(client.scheduler_info(n_workers=-1)["workers"]) == 1
            seen = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
        assert summary["n_clusters"] == 3 and seen  # the scheduler has run the command's tasks
    finally:
        stopped = _cci(env, "server", "stop", "--store", store.root)
    assert stopped.returncode == 0 and "Stopped the warm server" in stopped.stdout, stopped.stderr
    assert not any(_alive(pid) for pid in state["pids"].values())
    assert not _listening(state["api_url"]) and not _listening(state["dask_address"].replace("tcp", "http"))
    assert read_state(store.root) is None and not (store.root / ".cci-server.json").exists()
    res = _cci(env, "server", "status", "--store", store.root)
    assert res.returncode == 3 and "No warm server" in res.stdout


def test_stop_without_a_server_says_so(tmp_path, env):
    res = _cci(env, "server", "stop", "--store", tmp_path)
    assert res.returncode == 0 and "nothing to stop" in res.stdout


def test_each_store_keeps_its_own_runs(tmp_path, env):
    """Two stores' warm servers each list only their own runs: each keeps its Prefect database in
    its store (``<store>/.prefect/prefect.db``), so the history moves with the store."""
    from cci_core.ingest.ingest import ingest_local
    from cci_core.store.store import Store
    stores = [Store(tmp_path / name) for name in ("a", "b")]
    states = []
    try:
        for store in stores:
            ingest_local(store, "builtin:digits", "d28", size=(28, 28))
            res = _cci(env, "server", "start", "--store", store.root, "--workers", 1, "--json")
            assert res.returncode == 0, res.stderr[-3000:]
            states.append(json.loads(res.stdout))
            res = _cci(env, "cluster", "d28", "-k", 3, "--components", 10, "--store", store.root, "--json")
            assert res.returncode == 0, res.stderr[-3000:]
        for store, state in zip(stores, states):
            runs = httpx.post(f"{state['api_url']}/flow_runs/filter", json={}, timeout=10).json()
            assert runs and {t for r in runs for t in r["tags"] if t.startswith("store:")} == {f"store:{store.root}"}
            assert (store.root / ".prefect" / "prefect.db").stat().st_size > 0
    finally:
        for store in stores:
            _cci(env, "server", "stop", "--store", store.root)


def test_a_temporary_server_serves_its_ui_and_keeps_the_runs_in_the_store(tmp_path, env):
    """A command without a server starts a temporary one that serves the UI at the address it
    prints first, and records its runs in the store's own Prefect database."""
    import sqlite3

    from cci_core.ingest.ingest import ingest_local
    from cci_core.store.store import Store
    store = Store(tmp_path / "store")
    ingest_local(store, "builtin:digits", "d28", size=(28, 28))
    proc = subprocess.Popen([CCI, "cluster", "d28", "-k", "3", "--components", "10", "--store", str(store.root)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url, page = None, None
    for line in proc.stderr:  # the UI's address comes before the stage lines
        if "Watch it in the Prefect UI: " in line:
            url = line.split("Watch it in the Prefect UI: ")[1].split()[0]
            page = httpx.get(url, timeout=30, follow_redirects=True, headers={"Accept": "text/html"})  # as a browser
            break
    _, rest = proc.communicate(timeout=600)
    assert proc.returncode == 0, rest[-3000:]
    assert url and urlsplit(url).hostname == "127.0.0.1", rest[-3000:]
    assert page.status_code == 200 and "<html" in page.text.lower()
    with sqlite3.connect(store.root / ".prefect" / "prefect.db") as db:
        names = [name for (name,) in db.execute("select name from flow_run")]
    assert names == ["cluster d28 k=3"]
