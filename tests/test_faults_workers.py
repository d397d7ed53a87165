"""Workers that outlive a server (issue 28, item 6): a Dask cluster started by hand keeps working
when the next command reports to another Prefect API (each command without PREFECT_API_URL starts
a temporary server of its own, gone when the command ends).

The cluster is a real ``dask scheduler`` and ``dask worker`` on 127.0.0.1 with no PREFECT_API_URL
in their environment; the commands are the real ``cci`` console script (:func:`faults.run`)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import faults
import pytest
from conftest import dask_processes


@pytest.fixture(scope="module")
def bare_cluster(tmp_path_factory):
    """``dask scheduler`` + one ``dask worker`` as processes, their environment without PREFECT_API_URL."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["OMP_NUM_THREADS"] = "1"
    with dask_processes(env, 1, log_dir=tmp_path_factory.mktemp("cluster-logs")) as addr:
        yield addr


def test_prefect_services_follow_the_api():
    """In one process (a Dask worker's), Prefect's concurrency-slot service for a set of tags is one
    per API URL, its client made for that API; services of APIs not used for a while are drained."""
    from prefect.concurrency.services import ConcurrencySlotAcquisitionWithLeaseService as Service
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.api_follow import KEEP_APIS  # importing tasks installs it, as a worker unpickling a task does
    names = frozenset({"tag:corpus:faults-workers"})

    def service(port: int):
        with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}):
            return Service.instance(names)
    first = service(9)
    assert service(9) is first and service(10) is not first and service(9) is first
    time.sleep(0.5)  # the service's client is made on Prefect's loop thread
    assert str(first._client.api_url).startswith("http://127.0.0.1:9/") and not first._stopped
    others = [service(11 + i) for i in range(KEEP_APIS)]
    time.sleep(0.5)
    assert first._stopped and not others[-1]._stopped
    faults.TALLY["workers: Prefect services follow the API"] = "correct result"


def test_second_api_on_the_same_workers(bare_cluster, tmp_path, monkeypatch):
    """The `--dask-address` ingest of docs/commands.md, run twice: the second command's temporary Prefect
    server is a new API; the worker's tag-concurrency and events clients of the first (now gone)
    must not be reused. Before the fix the second run failed after 80-160 s with
    ConcurrencySlotAcquisitionError."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # each command starts its own server
    store = tmp_path / "store"
    argv = ["ingest", "builtin:digits", "--corpus", "c", "--dask-address", bare_cluster, "--store", store]
    first = faults.run(*argv, timeout=300)
    assert first.exit_code == 0, first.stderr[-3000:]
    before = faults.snapshot(store)
    second = faults.run(*argv, timeout=300)
    # "4/4 tasks": the second API saw the task runs (their state events were not sent to the first)
    faults.check("workers: a second Prefect API on the same Dask workers", second, before, store,
                 expect="correct result", correct=lambda r: "Nothing new: corpus c stays at v1" in r.stdout
                 and "4/4 tasks" in r.stderr)


TRAINING = {"start": "given", "recluster": "kmeans", "width": 8, "batch_size": 64, "rounds": 200,
            "warmup_steps": 10, "steps": 10}  # rounds of a few seconds each: minutes in all


def test_killed_refine_stops_its_training(bare_cluster, digits28_store, prefect_api):
    """`cci refine` on an external cluster, killed (SIGTERM) once its training task has written
    round 0: within seconds nothing in its run folder changes any more and the worker runs no task.
    Before the fix the training went on writing rounds for a minute or more."""
    from distributed import Client

    from cci_core.cluster.cluster_run import ClusterParams
    store = digits28_store("faults-kill", corpus="d28", base=ClusterParams(k=3, n_components=10))
    run_dir = store.run_dir("base-refined")
    sets = [a for k, v in TRAINING.items() for a in ("--set", f"{k}={v}")]
    proc = subprocess.Popen([Path(sys.executable).parent / "cci", "refine", "base", "--store", store.root,
                             "--dask-address", bare_cluster, *sets], env={**os.environ, "COLUMNS": "200"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, seen = time.monotonic() + 240, {}
    while len(seen) < 2:  # rounds 0 and 1 are written: the training task is running; a round takes this long
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the training did not start"
        seen.update({p: seen.get(p, time.monotonic()) for p in run_dir.rglob("_DONE")})
        time.sleep(0.1)
    period = max(seen.values()) - min(seen.values())
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    # one line of its own, the shell's code for SIGTERM, no traceback
    assert proc.returncode == 143 and not any(t in stderr for t in ("Traceback", "leaked semaphore",
                                                                    "resource_tracker")), stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "interrupted: refine base; run the same command again to resume"
    time.sleep(3)  # a round being saved may still land
    before = faults.snapshot(run_dir)
    time.sleep(max(4.0, 2 * period + 3))  # two more rounds would have been written by a task left running
    after = faults.snapshot(run_dir)
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))  # new files too
    with Client(bare_cluster, timeout=30, set_as_default=False) as client:
        # threads still executing a task, the cancelled ones too (the scheduler no longer lists those)
        busy = {w: keys for w, keys in client.run(lambda dask_worker: list(dask_worker.active_threads.values())).items()
                if keys}
    assert not changed and not busy, (period, changed, busy)
    faults.TALLY["workers: a killed refine stops writing its run"] = "correct result"


def test_ctrl_c_ends_in_one_line_and_a_rerun_resumes(digits28_store, tmp_path, monkeypatch):
    """Ctrl-C on a terminal signals the whole process group: the command, its temporary Prefect
    server and its LocalCluster's workers. The command ends with one line and exit code 130 (no
    traceback, no Prefect retries against a dead server, no leaked semaphores), and the same
    command again resumes after the rounds already done (their files untouched)."""
    from cci_core.cluster.cluster_run import ClusterParams
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # the command's own temporary server, as in `make run`
    store = digits28_store("faults-ctrl-c", corpus="d28", base=ClusterParams(k=3, n_components=10))
    run_dir = store.run_dir("base-refined")
    sets = [a for k, v in {**TRAINING, "rounds": 3}.items() for a in ("--set", f"{k}={v}")]
    argv = [Path(sys.executable).parent / "cci", "refine", "base", "--store", store.root, "--workers", "1", *sets]
    proc = _at_round_0(argv, run_dir)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    _ended_in_one_line(proc, 130)
    done = faults.snapshot(run_dir / "refine" / "round-00")
    rerun = subprocess.run(argv, env={**os.environ, "COLUMNS": "200"}, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert faults.snapshot(run_dir / "refine" / "round-00") == done  # resumed after it, not redone
    assert (run_dir / "refine" / "round-03" / "_DONE").exists()
    faults.TALLY["interrupt: Ctrl-C on cci refine, then the same command"] = "correct result"


def test_timeout_signals_the_group_twice_and_the_command_ends_in_one_line(digits28_store, monkeypatch):
    """`timeout` ends a command with SIGTERM twice: to the command, then to its whole process group
    (its LocalCluster's workers too). One line and exit code 143: before, the second signal, landing
    while the first unwound a lock wait, failed the flow with "release unlocked lock" and tracebacks,
    and workers killed mid-task left a semaphore to the resource tracker."""
    from cci_core.cluster.cluster_run import ClusterParams
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    store = digits28_store("faults-timeout", corpus="d28", base=ClusterParams(k=3, n_components=10))
    sets = [a for k, v in TRAINING.items() for a in ("--set", f"{k}={v}")]
    proc = _at_round_0(["timeout", "--preserve-status", "600", Path(sys.executable).parent / "cci", "refine", "base",
                        "--store", store.root, "--workers", "1", *sets], store.run_dir("base-refined"))
    proc.send_signal(signal.SIGTERM)  # `timeout` passes it on as when its time is up
    _ended_in_one_line(proc, 143)
    faults.TALLY["interrupt: timeout (SIGTERM to the group) on cci refine"] = "correct result"


def _at_round_0(argv: list, run_dir: Path) -> subprocess.Popen:
    """ARGV started in a process group of its own, once its refinement has written round 0."""
    proc = subprocess.Popen(argv, env={**os.environ, "COLUMNS": "200"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (run_dir / "refine" / "round-00" / "_DONE").exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the training did not start"
        time.sleep(0.1)
    return proc


def _ended_in_one_line(proc: subprocess.Popen, code: int) -> None:
    """No traceback, no Prefect retries against a dead server, no leaked semaphores: one line, CODE."""
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr[-3000:]
    for noise in ("Traceback", "Error logging to API", "leaked semaphore", "resource_tracker", "Crash detected"):
        assert noise not in stderr, stderr[-3000:]
    assert not [line for line in stderr.splitlines() if line.startswith("✗")], stderr[-3000:]  # not a failure
    assert stderr.strip().splitlines()[-1] == "interrupted: refine base; run the same command again to resume"
