"""`kill -9` of the real `cci cluster`, `cci generate` and `cci stylize` at several points.

Each command runs as a subprocess against one Prefect API for the module (no temporary server
per command) with one Dask worker, and is killed with SIGKILL when a file of its own appears in
the store (a staging folder, the embeddings, a partition), or a moment after. Then: nothing is
visible without its lineage record, readers see only committed versions and finished runs, the
previous good version is intact, and a re-run succeeds with the same result as an
uninterrupted run (made in-process beforehand) and leaves no staging folder behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from typer.testing import CliRunner

from cci_core.cluster import cluster_run as cr
from cci_core.generate import dataset_run
from cci_core.generate.settings import TrainParams
from cci_core.generate.training_run import train_local
from cci_core.palette import palette_run as pr
from cci_core.refine import refine_run as rr
from cci_core.store import runs
from cci_core.store.datasets import dataset_versions, list_datasets, open_dataset
from cci_core.store.lineage import LineageStore

CCI = str(Path(sys.executable).parent / "cci")
pytestmark = pytest.mark.slow  # ~3 min on 2 idle cores: nine `cci` subprocesses
PER_CLUSTER = 1500  # a few seconds of generation: room for kills inside it


@pytest.fixture(scope="module")
def store(digits28_store):
    """digits 28x28; a k=3 run refined into ``ref`` with tiny GANs; the reference results of an
    uninterrupted run of each command: dataset ``gen`` v1, dataset ``sty`` v1, run ``ref10``."""
    s = digits28_store("kill", km=cr.ClusterParams(k=3, n_components=20),
                       ref10=cr.ClusterParams(k=10, n_components=20))
    rr.refine_local(s, "km", rr.config_from_options({"rounds": 1, "warmup_steps": 20, "steps": 20, "batch_size": 64,
                                                     "width": 8, "start": "given", "recluster": "kmeans"}),
                    new_run_id="ref", log=lambda _: None)
    train_local(s, "ref", TrainParams(steps=10, batch_size=32, min_size=10, checkpoint_every=10, width=8, z_dim=16,
                                      baseline=False))
    dataset_run.generate_dataset(s, "ref", "gen", per_cluster=PER_CLUSTER, log=lambda _: None)
    s.palette = pr.learn_palette_step(s, "d28", 4, montage=0)["palette_id"]
    pr.stylize_step(s, "d28", s.palette, "sty", dither=True)
    return s


def _digest(store, name: str, version: int) -> str:
    ds = open_dataset(name, version, store=store)
    h = hashlib.sha256(np.ascontiguousarray(ds.images[:]).tobytes())
    h.update(ds.manifest.drop(columns=["index"]).to_json().encode())
    return h.hexdigest()


def _group(pgid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid:
                out.append(p)
        except (ProcessLookupError, psutil.Error):
            continue
    return out


def run_cci(store, *args, trigger=None, timeout=300) -> subprocess.CompletedProcess | float:
    """Run ``cci ARGS --store S --workers 1``. With ``trigger`` (a function of the elapsed time):
    SIGKILL the command as soon as it returns True and return the time of the kill."""
    log = Path(store.root) / f".cci-{time.time_ns()}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([CCI, *map(str, args), "--store", str(store.root), "--workers", "1"],
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "COLUMNS": "200"})
        t0 = time.time()
        try:
            while trigger is not None and not trigger(time.time() - t0):
                if proc.poll() is not None:
                    pytest.fail(f"cci {' '.join(map(str, args))} ended (rc {proc.returncode}) before its kill point:\n"
                                + log.read_text()[-3000:])
                if time.time() - t0 > timeout:
                    pytest.fail(f"cci {' '.join(args)}: kill point not reached in {timeout} s")
                time.sleep(0.02)
            if trigger is not None:
                killed_at = time.time() - t0
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
            print(f"cci {args[0]}: {'killed' if trigger else 'ended'} after {time.time() - t0:.1f} s")
        finally:
            # its Dask worker notices that its parent died and exits; give it a moment, then make sure
            deadline = time.time() + 20
            while _group(proc.pid) and time.time() < deadline:
                time.sleep(0.2)
            for p in _group(proc.pid):
                p.kill()
    if trigger is not None:
        return killed_at
    return subprocess.CompletedProcess(args, proc.returncode, log.read_text(), "")


def appears(pattern_dir: Path, pattern: str, delay: float = 0.0):
    """A kill trigger: ``delay`` seconds after a new file matching ``pattern`` appears in
    ``pattern_dir`` (one a killed command left before does not count)."""
    before = set(pattern_dir.glob(pattern)) if pattern_dir.exists() else set()
    state = {}

    def trigger(_elapsed):
        if "seen" not in state and pattern_dir.exists() and set(pattern_dir.glob(pattern)) - before:
            state["seen"] = time.time()
        return "seen" in state and time.time() - state["seen"] >= delay
    return trigger


def check_consistent(store) -> None:
    """What readers see is committed and recorded: every dataset version and finished run has
    its lineage record (with its URI), and `cci datasets list` agrees with open_dataset."""
    lin = LineageStore(store.lineage_url)
    for name in list_datasets(store):
        for v in dataset_versions(name, store):
            ds = open_dataset(name, v, store=store)
            art = lin.get(ds.card["lineage"]["artifact_id"])
            assert art.uri == str(ds.path) and len(ds.manifest) == len(ds) == ds.card["n_images"]
    from flows.cli import app
    res = CliRunner().invoke(app, ["datasets", "list", "--json", "--store", str(store.root)])
    assert res.exit_code == 0, res.output
    listed = {r["name"]: r["versions"] for r in json.loads(res.output)}
    assert listed == {n: dataset_versions(n, store) for n in list_datasets(store)}
    for run_id in runs.list_runs(store):
        run = runs.finished_run(store, run_id)
        parts = sorted((store.run_dir(run_id) / "partitions").glob("cluster-*.parquet"))
        assert len(parts) == len(run["partitions"]) == run["clustering"]["n_clusters"]
        assert lin.get(run["clustering"]["clustering_artifact_id"])
        assert all(lin.get(p["artifact_id"]).uri == p["path"] for p in run["partitions"])


def test_killed_generate_publishes_nothing_and_a_rerun_equals_an_uninterrupted_run(store, prefect_api):
    good = _digest(store, "gen", 1)
    ddir = store.dataset_dir("gen")
    args = ["generate", "ref", "--dataset", "gen", "--per-cluster", PER_CLUSTER]
    left = set()
    for delay in (0.0, 1.5):  # as its staging folder appears, and part-way through generation
        run_cci(store, *args, trigger=appears(ddir, ".staging-*", delay))
        assert dataset_versions("gen", store) == [1] and open_dataset("gen", store=store).version == 1
        now = set(ddir.glob(".staging-*"))
        assert now - left, "the kill should land while the version is being written"
        assert not left & now, "the next writer removes the staging folder of the killed one"
        left = now
        check_consistent(store)
        assert _digest(store, "gen", 1) == good
    res = run_cci(store, *args)
    assert res.returncode == 0, res.stdout[-3000:]
    assert dataset_versions("gen", store) == [1, 2] and not list(ddir.glob(".staging-*"))
    assert _digest(store, "gen", 2) == good  # same seed, same images and manifest as the uninterrupted run
    check_consistent(store)


def test_killed_stylize_publishes_nothing_and_a_rerun_equals_an_uninterrupted_run(store, prefect_api):
    good = _digest(store, "sty", 1)
    ddir = store.dataset_dir("sty")
    args = ["stylize", "d28", "--palette", store.palette, "--dataset", "sty", "--dither"]
    for delay in (0.0, 0.5):
        run_cci(store, *args, trigger=appears(ddir, ".staging-*", delay))
        assert dataset_versions("sty", store) == [1]
        check_consistent(store)
        assert _digest(store, "sty", 1) == good
    res = run_cci(store, *args)
    assert res.returncode == 0, res.stdout[-3000:]
    assert dataset_versions("sty", store) == [1, 2] and not list(ddir.glob(".staging-*"))
    assert _digest(store, "sty", 2) == good
    check_consistent(store)


def test_killed_clustering_is_never_a_run_and_a_rerun_starts_clean(store, prefect_api):
    rdir = store.run_dir("kr")
    k20 = ["cluster", "d28", "--k", "20", "--components", "20", "--run-id", "kr"]
    for where, pattern in ((rdir, "embeddings.zarr"), (rdir / "partitions", "cluster-010.parquet")):
        run_cci(store, *k20, trigger=appears(where, pattern))
        assert "kr" not in runs.list_runs(store)
        with pytest.raises(ValueError, match="no finished clustering"):
            runs.finished_run(store, "kr")
        check_consistent(store)
    # the same id with other parameters (k=10): a clean folder, none of the killed k=20 run's files
    res = run_cci(store, "cluster", "d28", "--k", "10", "--components", "20", "--run-id", "kr")
    assert res.returncode == 0, res.stdout[-3000:]
    parts = sorted(p.name for p in (rdir / "partitions").iterdir())
    assert parts == [f"cluster-{c:03d}.parquet" for c in range(10)]
    assert np.array_equal(cr.run_labels(runs.finished_run(store, "kr")), cr.run_labels(runs.finished_run(store, "ref10")))
    check_consistent(store)
    # and a finished run id is refused in one line, before any flow starts
    from flows.cli import app
    res = CliRunner().invoke(app, [*k20, "--store", str(store.root)])
    assert res.exit_code == 1 and "already exists and is complete" in res.output and "Traceback" not in res.output
