"""The refine and refresh stages' typed plans give back the exact run.json dicts, and a refresh of a
refined run is recorded as that run's child (library level, no Prefect)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cci_core.cluster import cluster_run as cr
from cci_core.ingest.idx import read_idx
from cci_core.ingest.ingest import ingest_local
from cci_core.refine import refine_run as rr
from cci_core.refine.records import RefinePlan
from cci_core.refresh import refresh_run
from cci_core.refresh.records import RefreshPlan
from cci_core.store import runs
from cci_core.store.store import Store, read_json

FMNIST = Path("/usr/share/datasets/fashion-mnist")
TINY = {"rounds": 1, "warmup_steps": 20, "steps": 20, "batch_size": 64, "width": 8, "seed": 1, "start": "given",
        "recluster": "kmeans"}

pytestmark = pytest.mark.skipif(not FMNIST.exists(), reason="apt-get install dataset-fashion-mnist")


def _write_pngs(folder: Path, images: np.ndarray, start: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{start + i:05d}.png")


@pytest.fixture(scope="module")
def refreshed(tmp_path_factory):
    """A folder corpus of 400 images clustered (``km``) and refined (``ref``), then 150 more
    images ingested and assigned: the refresh of ``ref``."""
    root = tmp_path_factory.mktemp("refresh")
    X = read_idx(FMNIST / "t10k-images-idx3-ubyte.gz")
    store = Store(root / "store")
    _write_pngs(root / "src", X[:400], 0)
    ingest_local(store, str(root / "src"), "fr")
    cr.run_local(store, "fr", cr.ClusterParams(k=3, n_components=10), run_id="km")
    plan = rr.start_refine(store, "km", rr.config_from_options(TINY), "ref")
    rr.refine_local(store, "km", rr.config_from_options(TINY), new_run_id="ref", log=lambda _: None)
    _write_pngs(root / "src", X[400:550], 400)
    ingest_local(store, str(root / "src"), "fr")
    drift = refresh_run.assign_new(store, "ref", retrain_threshold=0.2)
    return store, plan, drift


def test_refine_plan_gives_back_the_same_dict(refreshed):
    store, plan, _ = refreshed
    assert list(RefinePlan.from_json(plan).to_json()) == list(plan)  # run.json itself is written with sorted keys
    for d in (plan, json.loads(json.dumps(plan)), runs.read_run(store, "ref")):  # as started, via JSON, finished
        typed = RefinePlan.from_json(d)
        assert typed.to_json() == d
        assert RefinePlan.of(typed) is typed and RefinePlan.of(d) == typed
    assert typed.config == rr.config_from_options(TINY) and typed.run_dir == str(store.run_dir("ref"))
    with pytest.raises(KeyError, match="lacks parent_run"):
        RefinePlan.from_json({k: v for k, v in plan.items() if k != "parent_run"})


def test_refresh_is_a_child_of_the_run_it_refreshes(refreshed):
    store, _, drift = refreshed
    assert drift["changed"] and drift["n_new"] == 150 and drift["run_id"] == "ref-refresh-v2"
    assert [c["run_id"] for c in runs.children(store, "ref", "refresh")] == ["ref-refresh-v2"]
    assert runs.children(store, "ref", "refined") == []
    new = runs.read_run(store, "ref-refresh-v2")
    assert new["status"] == "complete" and new["refreshed_from"] == "ref" and new["n_rows"] == 550
    assert new["classifier"] == runs.read_run(store, "ref")["classifier"]
    assert len(cr.run_labels(new)) == 550 and (cr.run_labels(new)[:400] == cr.run_labels(runs.read_run(store, "ref"))).all()
    assert read_json(Path(new["run_dir"]) / "reports" / "drift.json") == drift

    # the record the refresh started with: every key of the typed plan, as in the finished run.json
    started = RefreshPlan.from_json(new).to_json()
    assert started == {k: new[k] for k in started}
    assert set(started) == {"corpus", "shape", "has_labels", "params", "kind", "run_id", "store", "run_dir",
                            "corpus_version", "corpus_artifact_id", "n_rows", "refreshed_from", "refresh_root",
                            "status", "created_at", "classifier", "classifier_artifact_id", "parent_run"}
    assert RefreshPlan.from_json(started).to_json() == started


def test_retrain_changed_trains_the_grown_clusters_and_carries_the_others_over(refreshed):
    from cci_core.generate.settings import TrainParams
    from cci_core.generate.training_run import train_local
    store, _, drift = refreshed
    train_local(store, "ref", TrainParams(steps=10, batch_size=32, min_size=10, checkpoint_every=10, width=8,
                                          z_dim=16, baseline=False, shared_start=0.0))  # shared start: test_pipeline
    before = read_json(store.run_dir("ref") / "models" / "training.json")
    changed = drift["changed_clusters"][:1] or [0]
    out = refresh_run.retrain_changed(store, "ref-refresh-v2", changed)
    assert out["retrained"] == changed
    assert out["carried_over"] == sorted({m["cluster"] for m in before["models"]} - set(changed))
    report = read_json(store.run_dir("ref-refresh-v2") / "models" / "training.json")
    assert [m["cluster"] for m in report["models"]] == changed + out["carried_over"]  # retrained first
    carried = [m for m in report["models"] if m["cluster"] in out["carried_over"]]
    assert carried and all(m["from_earlier_run"] == "ref" for m in carried)
    assert {m["dir"] for m in carried} <= {m["dir"] for m in before["models"]}
