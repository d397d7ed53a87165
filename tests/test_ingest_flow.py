"""The ingest flow under a real Prefect API, on Dask scheduler/worker processes on loopback."""
from __future__ import annotations

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from cci_core.store.corpus import open_corpus
from cci_core.store.lineage import LineageStore
from cci_core.store.store import Store


def test_cli_ingest_on_separate_dask_processes(tmp_path, dask_scheduler, run_cci):
    from flows.cli import app
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(src / f"{i:02d}.png")
    (src / "broken.png").write_text("not a png")
    store = tmp_path / "store"
    runner = CliRunner()  # for the read-only commands; flows run as real `cci` processes
    run = run_cci
    res = run("ingest", str(src), "--corpus", "demo", "--store", str(store),
              "--dask-address", dask_scheduler, "--batch-size", "4")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "added 12 images" in res.stdout and "corpus-" in res.stdout and "broken.png" in res.stderr
    c = open_corpus(Store(store), "demo")
    assert c.n_rows == 12 and len(c.quarantine()) == 1
    art = LineageStore(Store(store).lineage_url).get(c.artifact_id)
    assert art.producer.get("flow_run_id") and art.producer.get("task_name") == "commit-corpus-version"

    res = run("ingest", str(src), "--corpus", "demo", "--store", str(store), "--dask-address", dask_scheduler)
    assert res.returncode == 0 and "Nothing new" in res.stdout

    res = runner.invoke(app, ["corpus", "info", "demo", "--store", str(store), "--json"])
    assert res.exit_code == 0 and '"n_rows": 12' in res.output and "broken.png" in res.output
    res = runner.invoke(app, ["lineage", "show", c.artifact_id, "--store", str(store)])
    assert res.exit_code == 0 and "source" in res.output

    res = run("ingest", str(tmp_path / "nope"), "--corpus", "x", "--store", str(store),
              "--dask-address", dask_scheduler)
    assert res.returncode == 1 and "does not exist" in res.stderr
    res = runner.invoke(app, ["corpus", "info", "nope", "--store", str(store)])
    assert res.exit_code == 1 and "no corpus named" in res.output


def test_flow_on_local_cluster(tmp_path, prefect_api):
    from flows.ingest import ingest_flow
    from flows.runtime import dask_task_runner
    from flows.settings import IngestSettings
    flow = ingest_flow.with_options(task_runner=dask_task_runner(n_workers=2))
    summary = flow(IngestSettings("builtin:digits", "digits", store_root=str(tmp_path / "store"), batch_size=500))
    assert summary["changed"] and summary["n_rows"] == open_corpus(Store(tmp_path / "store"), "digits").n_rows
