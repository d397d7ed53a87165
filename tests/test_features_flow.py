"""`cci train --mode self-conditioned`, `cci self-condition` and `cci features` as a user runs
them: the Prefect flows on a Dask scheduler with two worker processes on loopback, their
lineage, the new run that generate reads; bad input as one line before any server starts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cci_core.cluster import cluster_run as cr
from cci_core.store import runs
from cci_core.store.lineage import LineageStore

TINY = ("--batch-size", 16, "--width", 8, "--z-dim", 8, "--device", "cpu")


@pytest.fixture(scope="module")
def store(digits28_store):
    return digits28_store("featuresflow", fr=cr.ClusterParams(k=3, n_components=10))


def test_train_self_conditioned_then_features_on_two_dask_workers(store, dask_scheduler, run_cci, prefect_api):
    # --steps is per cluster, as for --mode conditional: 3 clusters x 4 = 12 steps, re-clustered every 6
    res = run_cci("train", "fr", "--mode", "self-conditioned", "--steps", 4, "--recluster-every", 6,
                  "--checkpoint-every", 6, *TINY, "--store", store.root, "--dask-address", dask_scheduler, "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    assert summary["run_id"] == "fr-selfcond" and summary["status"] == "complete" and summary["k"] == 3
    assert [h["step"] for h in summary["history"]] == [0, 6, 12]
    run = runs.read_run(store, "fr-selfcond")
    assert run["kind"] == "self-conditioned" and run["params"]["steps"] == 12 and run["params"]["mode_seeking"] == 1.0
    labels = pd.read_parquet(store.run_dir("fr-selfcond") / "clustering" / "labels.parquet")
    assert len(labels) == 1797 and sorted(np.unique(labels["cluster"])) == [0, 1, 2]
    assert [p["count"] for p in run["partitions"]] == np.bincount(labels["cluster"], minlength=3).tolist()
    lin = LineageStore(store.lineage_url)
    clustering = lin.get(summary["clustering_artifact_id"])
    assert clustering.kind == "clustering" and clustering.producer["flow_name"] == "cci-self-condition"
    assert {r for _, r in clustering.inputs} == {"model", "initial_clustering", "corpus"}
    model = json.loads((store.run_dir("fr-selfcond") / "models" / "training.json").read_text())["models"][0]
    assert model["self_conditioned"] and model["steps"] == 12

    res = run_cci("features", "fr-selfcond", "--space", "pixels", "--space", "selfcond", "--fractions", "0.1,1",
                  "--max-train", 600, "--max-test", 300, "--forest-trees", 5, "--device", "cpu",
                  "--store", store.root, "--dask-address", dask_scheduler, "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    feats = json.loads(res.stdout)
    assert [r["space"] for r in feats["table"]] == ["pixels", "selfcond"]
    for row in feats["table"]:
        assert 0.0 <= row["nmi"] <= 1.0 and 0.0 < row["linear_100%"] <= 1.0
    report = json.loads(Path(feats["report"]).read_text())
    disc = next(s for s in report["spaces"] if s["space"] == "selfcond")
    assert "self-conditioned GAN" in disc["note"]  # the features of the GAN just trained
    art = lin.get(feats["report_artifact_id"])
    assert art.kind == "report" and art.producer["flow_name"] == "cci-features"
    emb = lin.get(disc["embeddings_artifact_id"])
    assert (model["artifact_id"], "model") in [tuple(i) for i in emb.inputs]


def test_cli_bad_input_is_one_line(store, run_cci):
    res = run_cci("train", "fr", "--mode", "self-conditioned", "--model", "vae", "--store", store.root)
    assert res.returncode == 1 and "--model vae does not apply to --mode self-conditioned" in res.stderr
    assert "Traceback" not in res.stderr
    res = run_cci("train", "fr", "--mode", "magic", "--store", store.root)
    assert res.returncode == 1 and "self-conditioned" in res.stderr and "Traceback" not in res.stderr
    res = run_cci("self-condition", "nope", "--store", store.root)
    assert res.returncode == 1 and "nope" in res.stderr and "Traceback" not in res.stderr
    res = run_cci("self-condition", "fr", "--mode-seeking", -1, "--store", store.root)
    assert res.returncode == 1 and "--mode-seeking -1" in res.stderr
    # a feature space whose model was never trained names the command that trains it
    res = run_cci("features", "fr", "--space", "classifier", "--store", store.root)
    assert res.returncode == 1 and "cci refine fr" in res.stderr and "Traceback" not in res.stderr
