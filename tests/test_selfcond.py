"""The self-conditioned GAN: re-clustering keeps ids, and the final clustering is a regular
run that train / evaluate / generate read (builtin digits at 28x28, tiny budgets)."""
from __future__ import annotations

import numpy as np
import pytest

from cci_core.cluster import cluster_run as cr
from cci_core.generate import dataset_run
from cci_core.generate import selfcond as sc
from cci_core.generate import selfcond_clusters as scc
from cci_core.store import runs
from cci_core.store.lineage import LineageStore


def _blobs(seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(c, 1.0, (150, 6)) for c in (0.0, 4.0, 8.0, 12.0)]).astype(np.float32)


def test_recluster_on_unchanged_features_keeps_every_id():
    X = _blobs()
    labels, _ = scc.initial_clusters(X, 4, seed=0)
    same = scc.recluster(X, labels, 4)
    assert np.array_equal(same["labels"], labels) and same["changed"] == 0.0
    # whatever the ids were called before, they keep their names
    renamed = np.array([3, 0, 2, 1])[labels]
    assert np.array_equal(scc.recluster(X, renamed, 4)["labels"], renamed)
    # from arbitrary conditions: the first re-clustering moves rows, the next one keeps every id
    rough = np.random.default_rng(1).integers(0, 4, len(X)).astype(np.int32)
    first = scc.recluster(X, rough, 4)
    again = scc.recluster(X, first["labels"], 4)
    assert np.array_equal(again["labels"], first["labels"]) and again["changed"] == 0.0
    # the centres follow the matched ids
    means = np.stack([X[first["labels"] == j].mean(0) for j in range(4)])
    np.testing.assert_allclose(first["centres"], means, rtol=1e-5, atol=1e-5)


def test_recluster_matches_new_ids_to_old_when_features_move():
    X = _blobs()
    labels, _ = scc.initial_clusters(X, 4, seed=0)
    moved = X * 3.0 + 7.0  # same structure, other coordinates
    res = scc.recluster(moved, labels, 4)
    assert np.array_equal(res["labels"], labels)


@pytest.fixture(scope="module")
def store(digits28_store):
    return digits28_store("selfcond", r=cr.ClusterParams(k=3, n_components=20))


def test_selfcond_run_is_a_regular_clustering_run(store):
    params = sc.SelfCondParams(steps=10, recluster_every=5, width=8, z_dim=16, batch_size=32,
                               checkpoint_every=10, device="cpu")
    run = sc.selfcond_local(store, "r", params, log=lambda *a: None)
    assert run["status"] == "complete" and run["kind"] == "self-conditioned" and run["parent_run"] == "r"
    rdir = store.run_dir("r-selfcond")
    labels = cr.run_labels(run)
    assert labels.shape == (run["n_rows"],) and labels.min() >= 0 and labels.max() < 3
    assert sum(p["count"] for p in run["partitions"]) == run["n_rows"]
    hist = run["clustering"]
    assert (rdir / "selfcond" / "labels-step-0000005.npy").exists()
    assert (rdir / "selfcond" / "labels-step-0000010.npy").exists()
    # lineage: clustering <- model <- corpus; partitions <- clustering
    lin = LineageStore(store.lineage_url)
    clustering = lin.get(hist["clustering_artifact_id"])
    roles = {r for _, r in clustering.inputs}
    assert {"model", "corpus", "initial_clustering"} <= roles
    part = lin.get(run["partitions"][0]["artifact_id"])
    assert (hist["clustering_artifact_id"], "clustering") in [tuple(i) for i in part.inputs]
    # what generate / evaluate / train read
    kind, models = dataset_run.chosen_models(store, runs.read_run(store, "r-selfcond"), None)
    assert kind == "conditional" and models[0]["clusters"] == [0, 1, 2]
    from cci_core.generate.sampling import generate, load_generator
    g = load_generator(models[0]["dir"], "cpu")
    assert g.cfg.n_classes == 3
    assert generate(g, 6, labels=np.array([0, 1, 2, 0, 1, 2])).shape == (6, 28, 28, 1)
    from cci_core.generate.settings import TrainParams
    from cci_core.generate.training_run import plan_training
    assert plan_training(store, "r-selfcond", TrainParams(steps=1, min_size=1, baseline=False))["jobs"]
    # a finished run is never overwritten
    with pytest.raises(ValueError, match="already exists"):
        sc.start_selfcond(store, "r", params)


def test_selfcond_bad_input(store):
    with pytest.raises(LookupError, match="no run"):
        sc.check_selfcond(store, "nope", sc.SelfCondParams())
    with pytest.raises(ValueError, match="--init"):
        sc.check_selfcond(store, "r", sc.SelfCondParams(init="magic"))
    with pytest.raises(ValueError, match="--batch-size 1: mode seeking compares pairs"):
        sc.check_selfcond(store, "r", sc.SelfCondParams(batch_size=1))
