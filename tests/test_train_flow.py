"""`cci train` and `cci evaluate` as a user runs them: the Prefect flows on a Dask scheduler
with two worker processes on loopback (CPU only: no GPU resource asked for), their Prefect
artifacts and lineage; bad input as one line, before any server starts."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cci_core.cluster import cluster_run as cr
from cci_core.cluster.explore import explorer_path
from cci_core.store import runs
from cci_core.store.lineage import LineageStore


@pytest.fixture(scope="module")
def store(digits28_store):
    return digits28_store("trainflowstore", "digits28", flowrun=cr.ClusterParams(k=3, n_components=20),
                          untrained=cr.ClusterParams(k=2, n_components=10))


def test_cli_train_and_evaluate_on_two_dask_workers(store, dask_scheduler, run_cci, prefect_api):
    sizes = [p["count"] for p in runs.read_run(store, "flowrun")["partitions"]]
    small = min(range(3), key=lambda k: sizes[k])
    res = run_cci("train", "flowrun", "--steps", 20, "--batch-size", 16, "--width", 8, "--baseline-width", 8, "--z-dim", 8,
                  "--checkpoint-every", 10, "--min-size", sizes[small] + 1, "--device", "cpu",
                  "--store", store.root, "--dask-address", dask_scheduler, "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    big = [k for k in range(3) if k != small]
    # the default: a shared start (half of the 40 steps), each cluster fine-tuned from it, and the baseline
    assert [m["name"] for m in summary["models"]] == ["shared-start"] + [f"cluster-{k}" for k in big] + ["baseline"]
    assert [s["cluster"] for s in summary["skipped"]] == [small]
    assert [m["steps"] for m in summary["models"]] == [20, 10, 10, 20 * len(big)]
    lin = LineageStore(store.lineage_url)
    for m in summary["models"]:
        assert all(math.isfinite(v) for v in m["losses"].values())
        art = lin.get(m["artifact_id"])
        assert art.kind == "model" and art.producer["flow_name"] == "cci-train"
        assert art.producer["task_name"] == ("train-cluster" if m["kind"] == "cluster" else f"train-{m['name']}")
        if m["kind"] == "cluster":  # fine-tuned from the shared start, which finished first
            assert (summary["models"][0]["artifact_id"], "model") in art.inputs
            assert m["finished_at"] > summary["models"][0]["finished_at"]
        assert Path(store.run_dir("flowrun") / "models" / m["name"] / "generator.safetensors").exists()
        assert m["worker_resources"] == {}  # CPU-only workers: no GPU resource asked for, nothing hangs
        assert m["threads"] == 1  # the worker's own thread count (the fixture's workers have one each)
    page = explorer_path(store.run_dir("flowrun")).read_text()  # rebuilt by cci train: real vs generated
    assert page.count('<img class="t g"') == 8 * len(big) and "not evaluated (run `cci evaluate RUN`)" in page
    assert f"<tr id='generated-{small}'><td>{small}</td>" in page and "fewer than --min-size" in page

    res = run_cci("evaluate", "flowrun", "--samples", 20, "--max-real", 120, "--ref-steps", 30,
                  "--store", store.root, "--dask-address", dask_scheduler, "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    ev = json.loads(res.stdout)
    report = json.loads(Path(ev["report"]).read_text())
    assert report["groups"] == ["per_cluster", "baseline"]
    assert {m: c["winner"] for m, c in report["comparison"]["classifier"].items()}.keys() >= {"fid", "coverage"}
    assert math.isfinite(report["reports"]["classifier"]["per_cluster"]["fidelity"])
    page = explorer_path(store.run_dir("flowrun")).read_text()  # rebuilt by cci evaluate: the per-cluster FD
    assert "not evaluated" not in page and page.count("<span class='fd' data-space='classifier'>") == len(big)
    art = lin.get(ev["report_artifact_id"])
    assert art.kind == "report" and art.producer["flow_name"] == "cci-evaluate"
    assert sorted(i for i, r in art.inputs if r == "model") == sorted(m["artifact_id"] for m in summary["models"]
                                                                      if m["kind"] != "shared")
    assert {r for _, r in art.inputs} == {"model", "features"}

    # what the operator sees in Prefect: progress, per-model table, sample grids, the comparison
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    keys = ["train-flowrun", "train-samples-flowrun", "train-progress-flowrun", "evaluate-flowrun",
            "evaluate-report-flowrun"]
    with get_client(sync_client=True) as client:
        arts = {a.key: a for a in client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))}
    assert set(arts) == set(keys)
    assert "skipped" in str(arts["train-flowrun"].data) and "baseline" in str(arts["train-flowrun"].data)
    assert str(arts["train-samples-flowrun"].data).count("data:image/png;base64,") == 4
    assert float(arts["train-progress-flowrun"].data) == 100.0
    assert "winner" in str(arts["evaluate-flowrun"].data)

    # a worker advertising a GPU joins: a re-run asks for it, so every training task runs there;
    # and it resumes from the checkpoints, training nothing again
    bindir = Path(sys.executable).parent
    gpu = subprocess.Popen([bindir / "dask", "worker", dask_scheduler, "--nthreads", "1", "--host", "127.0.0.1",
                            "--dashboard-address", "127.0.0.1:0", "--resources", "GPU=1", "--name", "gpu-worker"],
                           env={**os.environ, "PREFECT_API_URL": prefect_api},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        from distributed import Client
        with Client(dask_scheduler, timeout=60) as client:
            client.wait_for_workers(3, timeout=90)
        from cci_core.generate.settings import TrainParams
        from flows.runtime import dask_task_runner
        from flows.settings import TrainSettings
        from flows.train import train_flow
        params = TrainParams(steps=20, batch_size=16, checkpoint_every=10, min_size=sizes[small] + 1, width=8,
                             baseline_width=8, z_dim=8, device="cpu")
        again = train_flow.with_options(task_runner=dask_task_runner(dask_scheduler))(
            TrainSettings("flowrun", store_root=str(store.root), params=params))
    finally:
        gpu.terminate()
        gpu.wait(timeout=30)
    assert [m["worker_resources"] for m in again["models"]] == [{"GPU": 1.0}] * len(summary["models"])
    assert [m["resumed_from"] for m in again["models"]] == [m["steps"] for m in summary["models"]]
    assert again["model_artifact_ids"] == summary["model_artifact_ids"]


def test_cli_train_evaluate_bad_input_is_one_line(store):
    # the real app in-process (the commands check the request before any server or cluster starts)
    from typer.testing import CliRunner

    from flows.cli import app
    runner = CliRunner()
    for args, message in [(["train", "no-such-run"], "no run 'no-such-run'"),
                          (["train", "flowrun", "--min-size", "100000"], "smaller than --min-size 100000"),
                          (["train", "flowrun", "--model", "vae", "--mode", "conditional"], "conditional GAN"),
                          (["evaluate", "untrained"], "run `cci train untrained` first"),
                          (["evaluate", "flowrun", "--samples", "3"], "--samples 3")]:
        res = runner.invoke(app, [*args, "--store", str(store.root)], env={"COLUMNS": "200"})
        assert res.exit_code == 1 and message in res.stderr, (args, res.stderr, res.exception)
        assert "Traceback" not in res.stderr and "Prefect server" not in res.stderr + res.stdout
        assert len(res.stderr.strip().splitlines()) == 1
    assert not (store.run_dir("untrained") / "models").exists()
