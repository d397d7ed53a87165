"""`cci refine RUN`: the CCI classifier trained on a clustering run, published as a new run
(classifier, refined clustering, partitions, per-round report) with lineage; the flow under a
real Prefect API; bad input as one line, nothing overwritten."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cci_core.cluster import cluster_run as cr
from cci_core.ingest.idx import read_idx
from cci_core.ingest.ingest import ingest_local
from cci_core.predict import predict as pr
from cci_core.refine import refine_run as rr
from cci_core.store import runs
from cci_core.store.corpus import open_corpus
from cci_core.store.lineage import LineageStore
from cci_core.store.store import Store

FMNIST = Path("/usr/share/datasets/fashion-mnist")
TINY = {"rounds": 1, "warmup_steps": 20, "steps": 20, "batch_size": 64, "width": 8, "seed": 1, "start": "given",
        "recluster": "kmeans"}

pytestmark = pytest.mark.skipif(not FMNIST.exists(), reason="apt-get install dataset-fashion-mnist")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("refine")
    images = read_idx(FMNIST / "t10k-images-idx3-ubyte.gz")[:1200]
    labels = read_idx(FMNIST / "t10k-labels-idx1-ubyte.gz")[:1200]
    np.savez(root / "fm.npz", images=images, labels=labels)
    s = Store(root / "store")
    ingest_local(s, str(root / "fm.npz"), "fm")
    cr.run_local(s, "fm", cr.ClusterParams(k=6, n_components=20), run_id="fm-km")
    return s


def test_refined_run_is_a_new_run_with_classifier_partitions_and_lineage(store):
    parent_before = runs.read_run(store, "fm-km")
    run = rr.refine_local(store, "fm-km", rr.config_from_options(TINY), log=lambda _: None)
    assert run["status"] == "complete" and run["run_id"] == "fm-km-refined" and run["parent_run"] == "fm-km"
    parent_after = runs.read_run(store, "fm-km")  # the parent only gains the link to its child
    assert parent_after.pop("children") == [{"run_id": "fm-km-refined", "kind": "refined"}]
    assert parent_after == parent_before
    assert [c["run_id"] for c in runs.children(store, "fm-km", "refined")] == ["fm-km-refined"]

    labels = cr.run_labels(run)
    assert labels.shape == (1200,) and labels.min() >= 0 and labels.max() < 6
    assert sum(p["count"] for p in run["partitions"]) == 1200
    report = json.loads(Path(run["clustering"]["report"]).read_text())
    assert [r["round"] for r in report["rounds"]] == [0, 1] and report["chosen_round"] in (0, 1)
    assert all(0 <= r["nmi"] <= 1 and 0 <= r["acc"] <= 1 for r in report["rounds"])  # the corpus has labels

    lin = LineageStore(store.lineage_url)
    clf = lin.get(run["clustering"]["classifier_artifact_id"])
    assert {r for _, r in clf.inputs} == {"initial_clustering", "corpus"}
    assert dict((r, i) for i, r in clf.inputs)["initial_clustering"] == parent_before["clustering"]["clustering_artifact_id"]
    part = lin.get(run["partitions"][0]["artifact_id"])
    assert {r for _, r in part.inputs} == {"corpus", "classifier", "clustering"}

    # predicting on the refined run uses its classifier, which has learned the refined clusters
    pred = pr.predict(store, run["run_id"], open_corpus(store, "fm").images()[:600])
    assert pr.load_predictor(store, run["run_id"]).method == "cci classifier"
    assert (pred["cluster"].to_numpy() == labels[:600]).mean() > 0.5
    assert Path(run["run_dir"], "pictures", "clusters.png").exists()


def test_refine_bad_input_is_clear_and_overwrites_nothing(store):
    with pytest.raises(LookupError, match="no run 'nope'"):
        rr.start_refine(store, "nope", rr.RefineConfig())
    with pytest.raises(ValueError, match="fewer than one batch"):
        rr.start_refine(store, "fm-km", rr.config_from_options({"batch_size": 5000}), "big-batch")
    with pytest.raises(ValueError, match="unknown refine option 'lamda'"):
        rr.config_from_options({"lamda": 1})
    with pytest.raises(ValueError, match="expected a int"):
        rr.config_from_options({"steps": "many"})
    cr.run_local(store, "fm", cr.ClusterParams(algorithm="hdbscan", k=None, min_cluster_size=20), run_id="fm-hdb")
    assert runs.read_run(store, "fm-hdb")["clustering"]["n_noise"] > 0
    with pytest.raises(ValueError, match="as noise"):
        rr.start_refine(store, "fm-hdb", rr.RefineConfig())
    ingest_local(store, "builtin:digits", "digits")
    cr.run_local(store, "digits", cr.ClusterParams(k=3, n_components=10), run_id="digits-km")
    # any image shape is taken (issue 29): 8x8 digits pass the checks that 28x28 corpora pass
    assert rr.check_refine(store, "digits-km", rr.config_from_options({"batch_size": 64}))["shape"][:2] == [8, 8]
    rr.refine_local(store, "fm-km", rr.config_from_options(TINY), new_run_id="done", log=lambda _: None)
    before = (store.run_dir("done") / "classifier" / "classifier.safetensors").read_bytes()
    with pytest.raises(ValueError, match="already exists and is complete"):
        rr.start_refine(store, "fm-km", rr.config_from_options(TINY), "done")
    assert (store.run_dir("done") / "classifier" / "classifier.safetensors").read_bytes() == before


def test_cli_refine_under_prefect(store, run_cci, prefect_api):
    sets = [a for k, v in TINY.items() if k not in ("rounds", "steps", "batch_size", "seed")
            for a in ("--set", f"{k}={v}")]
    res = run_cci("refine", "fm-km", "--store", store.root, "--rounds", "1", "--steps", "20", "--batch-size", "64",
                  "--seed", "1", *sets, "--run-id", "cli-refined", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    assert summary["status"] == "complete" and len(summary["rounds"]) == 2
    lib = rr.refine_local(store, "fm-km", rr.config_from_options(TINY), new_run_id="lib-refined", log=lambda _: None)
    # the flow (refine task on a Dask worker process) and the library agree for the same seed. Bit-for-bit
    # equality holds within one process set-up (resume is exact: tests/test_refine.py); across processes
    # with other thread pools the CNN's float sums differ slightly, which moves some boundary rows.
    cli_run = runs.read_run(store, "cli-refined")
    cli_rounds = json.loads(Path(cli_run["clustering"]["report"]).read_text())["rounds"]
    lib_rounds = json.loads(Path(lib["clustering"]["report"]).read_text())["rounds"]
    assert cli_rounds[0]["loss_ce"] == pytest.approx(lib_rounds[0]["loss_ce"], rel=1e-2)
    assert (cr.run_labels(cli_run) == cr.run_labels(lib)).mean() > 0.8
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["refine-rounds-fm"])))
    assert arts and "selection_score" in str(arts[0].data)
    res = run_cci("refine", "missing-run", "--store", store.root)
    assert res.returncode == 1 and "no run 'missing-run'" in res.stderr and "Traceback" not in res.stderr


def test_report_json_reads_with_pandas(store):
    run = runs.read_run(store, "fm-km-refined")
    rounds = pd.DataFrame(json.loads(Path(run["clustering"]["report"]).read_text())["rounds"])
    assert {"round", "acc", "nmi", "ari", "silhouette"} <= set(rounds.columns)
