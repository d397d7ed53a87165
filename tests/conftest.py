"""Shared fixtures: one Prefect test harness per session, single-threaded BLAS/torch."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def pytest_sessionstart(session):
    report = os.environ.get("CCI_FAULT_REPORT")
    if report and not hasattr(session.config, "workerinput"):  # the controller (or a run without -n)
        Path(report).unlink(missing_ok=True)  # a new tally, which every worker process adds to
    # `make test` installs the Debian packages first (scripts/system-deps.sh) and sets this, so a
    # broken install fails loudly here instead of silently skipping the real-data tests.
    if os.environ.get("CCI_REQUIRE_SYSTEM_DEPS") == "1":
        missing = [str(p) for p in (FASHION_MNIST, Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver"))
                   if not p.exists()]
        if missing:
            pytest.exit(f"missing {', '.join(missing)}: run `bash scripts/system-deps.sh` (make test does)",
                        returncode=3)


# the longest modules (minutes each on 2 cores) start first, so that `pytest -n` (make test) does not end
# with one worker on a long module while the other is idle; the rest keep their order
LONG_MODULES = ("test_refine_defaults", "test_export_fiftyone", "test_e2e_ui", "test_dataset_consumers",
                "test_object_store", "test_cci_run", "test_faults_workers", "test_refine_k_auto", "test_warm_server",
                "test_postgres_lineage", "test_operator_view", "test_refine_steady", "test_kill",
                "test_faults_moved_store")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: same order within a module


@pytest.fixture(scope="module", autouse=True)
def _no_leaked_dask_default():
    """A test module that leaves dask's default scheduler on a closed Client breaks every later module
    computing a dask graph ('Requested dask.distributed scheduler but no Client active'): fail the module
    that did it instead (use Client(..., set_as_default=False) in tests)."""
    yield
    import dask
    if dask.config.get("scheduler", None) == "dask.distributed":
        from distributed import default_client
        try:
            default_client()
        except ValueError:
            dask.config.set(scheduler=None)
            pytest.fail("this module left dask's default scheduler on a closed distributed Client")


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    # Multi-threaded BLAS/torch on 2 shared cores is many times slower than one thread here.
    import torch
    from threadpoolctl import threadpool_limits
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="session")
def digits28_store(tmp_path_factory):
    """A factory for module fixtures: a fresh store with scikit-learn's digits ingested at
    28x28 as ``corpus`` and one finished clustering run per ``run_id=ClusterParams(...)``."""
    from cci_core.cluster import cluster_run as cr
    from cci_core.ingest.ingest import ingest_local
    from cci_core.store.store import Store

    def make(name: str, corpus: str = "d28", **runs: "cr.ClusterParams") -> Store:
        s = Store(tmp_path_factory.mktemp(name))
        ingest_local(s, "builtin:digits", corpus, size=(28, 28))
        for run_id, params in runs.items():
            cr.run_local(s, corpus, params, run_id=run_id)
        return s
    return make


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API for the whole session; exported so Dask worker processes use it too."""
    from prefect.testing.utilities import prefect_test_harness
    with prefect_test_harness(server_startup_timeout=120):
        from prefect.settings import PREFECT_API_URL
        url = PREFECT_API_URL.value()
        os.environ["PREFECT_API_URL"] = url
        yield url
        os.environ.pop("PREFECT_API_URL", None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def dask_processes(env: dict, n_workers: int, log_dir: Path | None = None):
    """``dask scheduler`` and N_WORKERS ``dask worker`` processes (one thread each) on 127.0.0.1 with
    the environment ENV; yields the scheduler's address once every worker has joined, and ends them
    all. LOG_DIR: their working folder and stderr logs (else stderr is dropped)."""
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    bindir = Path(sys.executable).parent
    with contextlib.ExitStack() as files:
        def stderr(name: str):
            return files.enter_context(open(log_dir / f"{name}.log", "w")) if log_dir else subprocess.DEVNULL
        procs = [subprocess.Popen([bindir / "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                   "--dashboard-address", "127.0.0.1:0"], env=env, cwd=log_dir,
                                  stdout=subprocess.DEVNULL, stderr=stderr("scheduler"))]
        time.sleep(2)
        for i in range(n_workers):
            procs.append(subprocess.Popen([bindir / "dask", "worker", addr, "--nthreads", "1", "--host", "127.0.0.1",
                                           "--dashboard-address", "127.0.0.1:0"], env=env, cwd=log_dir,
                                          stdout=subprocess.DEVNULL, stderr=stderr(f"worker-{i}")))
        try:
            from distributed import Client
            with Client(addr, timeout=60, set_as_default=False) as client:
                client.wait_for_workers(n_workers, timeout=90)
            yield addr
        finally:
            for p in procs[::-1]:
                p.terminate()
            for p in procs:
                p.wait(timeout=30)


@pytest.fixture(scope="session")
def dask_scheduler(prefect_api):
    """A scheduler and two workers as separate processes on 127.0.0.1."""
    with dask_processes({**os.environ, "PREFECT_API_URL": prefect_api}, 2) as addr:
        yield addr


@pytest.fixture
def run_cci():
    """Run the real `cci` console script in a subprocess (as a user would)."""
    cci = str(Path(sys.executable).parent / "cci")

    def run(*args, timeout=600):
        return subprocess.run([cci, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "COLUMNS": "200"})
    return run


@pytest.fixture(scope="session")
def published_store(tmp_path_factory):
    """A store with a generated, evaluated and published dataset ``gen@v1`` of the tiny trained
    run ``ref`` (tests/tiny_run.py): 12 images for each of its 3 clusters."""
    from tiny_run import train_tiny

    from cci_core.generate import dataset_run
    from cci_core.generate.evaluation_run import evaluate_local
    from cci_core.generate.settings import EvalParams
    from cci_core.store.store import Store
    store = train_tiny(Store(tmp_path_factory.mktemp("published")))
    evaluate_local(store, "ref", EvalParams(samples=12, max_real=60, ref_steps=30, kid_subsets=3))
    dataset_run.generate_dataset(store, "ref", "gen", per_cluster=12, threshold=0.4, seed=3, log=lambda _: None)
    return store


def pytest_sessionfinish(session, exitstatus):
    """``CCI_FAULT_REPORT=path.json``: the fault-injection tally of every ``test_faults_*`` module (tests/faults.py)."""
    path = os.environ.get("CCI_FAULT_REPORT")
    faults = sys.modules.get("faults")
    if path and faults is not None and faults.TALLY:
        faults.report(path)
