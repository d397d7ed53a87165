"""`cci features` logic on a real store: builtin digits at 28x28, a 3-cluster run, a tiny GAN."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from cci_core.cluster import cluster_run as cr
from cci_core.features import feature_spaces as fs
from cci_core.features.probes import run_probes
from cci_core.generate.settings import TrainParams
from cci_core.generate.training_run import train_local
from cci_core.ingest.ingest import ingest_local
from cci_core.store.corpus import open_corpus
from cci_core.store.lineage import LineageStore

FAST = dict(forest_trees=20, silhouette_sample=500)


@pytest.fixture(scope="module")
def store(digits28_store):
    return digits28_store("features", r=cr.ClusterParams(k=3, n_components=20))


def test_missing_models_name_the_command(store):
    with pytest.raises(fs.SpaceUnavailable, match=r"`cci train r`"):
        fs.plan_features(store, "r", fs.FeatureParams(spaces=["discriminator"]))
    with pytest.raises(fs.SpaceUnavailable, match=r"`cci features r --vae-steps"):
        fs.plan_features(store, "r", fs.FeatureParams(spaces=["vae"]))
    with pytest.raises(fs.SpaceUnavailable, match=r"`cci refine r`"):
        fs.plan_features(store, "r", fs.FeatureParams(spaces=["classifier"]))
    with pytest.raises(ValueError, match="unknown"):
        fs.plan_features(store, "r", fs.FeatureParams(spaces=["sift"]))


def test_comparison_end_to_end(store):
    train_local(store, "r", TrainParams(steps=10, width=8, z_dim=16, min_size=10, batch_size=32,
                                        checkpoint_every=10, baseline=False))
    fs.train_corpus_vae(store, "r", steps=5, width=8, z_dim=4, batch_size=32)
    rep = fs.compare_local(store, "r", fs.FeatureParams(**FAST))
    spaces = [r["space"] for r in rep["spaces"]]
    assert spaces == ["pixels", "pca", "discriminator", "vae"]
    assert [s["space"] for s in rep["skipped"]] == ["classifier", "selfcond"]
    assert "cci refine r" in rep["skipped"][0]["reason"]
    assert "cci train r --mode self-conditioned" in rep["skipped"][1]["reason"]
    assert Path(rep["report"]).exists() and Path(rep["chart"]).stat().st_size > 1000
    for row in rep["table"]:
        for col in ("acc", "nmi", "ari", "silhouette", "linear_100%", "knn_1%", "forest_10%"):
            assert row[col] is not None and -1.0 <= row[col] <= 1.0, (row["space"], col)
    by = {r["space"]: r for r in rep["spaces"]}
    assert set(by["pixels"]["timings"]) >= {"kmeans", "silhouette", "probes"}
    # the discriminator features: a Zarr per corpus row, an embeddings artifact from the model + corpus
    d = by["discriminator"]
    arr = zarr.open_array(d["path"], mode="r")
    assert arr.shape == (1797, 32) and d["path"].endswith("features/discriminator.zarr")
    lin = LineageStore(store.lineage_url)
    art = lin.get(d["embeddings_artifact_id"])
    assert art.kind == "embeddings" and art.params["device"] == "cpu"
    assert {r for _, r in art.inputs} == {"model", "corpus"}
    assert lin.get(rep["report_artifact_id"]).kind == "report"


def test_probe_accuracy_on_raw_pixels_equals_sklearn(store):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    c = open_corpus(store, "d28")
    X = c.read_images(slice(0, c.n_rows)).reshape(c.n_rows, -1).astype(np.float32) / np.float32(255.0)
    y = np.asarray(c.labels(), dtype=object)
    params = fs.FeatureParams(fractions=[0.1, 1.0], **FAST)
    got = run_probes(X, y, params)
    codes = pd.factorize(y)[0]
    rng = np.random.default_rng(0).permutation(c.n_rows)
    n_test = round(0.2 * c.n_rows)
    test, train = np.sort(rng[:n_test]), rng[n_test:]
    for frac, key in ((0.1, "10%"), (1.0, "100%")):
        rows = train[:int(np.ceil(frac * len(train)))]
        models = {"linear": make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
                  "knn": KNeighborsClassifier(n_neighbors=5),
                  "forest": RandomForestClassifier(n_estimators=20, random_state=0, n_jobs=1)}
        for name, m in models.items():
            acc = float((m.fit(X[rows], codes[rows]).predict(X[test]) == codes[test]).mean())
            assert got[name][key]["acc"] == acc, (name, key)
            assert got[name][key]["n_train"] == len(rows)
    assert got["n_test"] == n_test


def test_corpus_without_labels_gives_clustering_columns_only(store, tmp_path):
    images = open_corpus(store, "d28").read_images(slice(0, 300))
    np.save(tmp_path / "plain.npy", images)
    ingest_local(store, str(tmp_path / "plain.npy"), "plain")
    cr.run_local(store, "plain", cr.ClusterParams(k=3, n_components=10), run_id="p")
    rep = fs.compare_local(store, "p", fs.FeatureParams(**FAST))
    assert "no labels" in rep["probe_note"] and "probe columns" in rep["probe_note"]
    for row in rep["table"]:
        assert row["silhouette"] is not None and row["acc"] is None and row["linear_100%"] is None
    assert "no labels" in rep["markdown"]


def test_fashion_mnist_subset(store, tmp_path):
    from cci_core.ingest.idx import read_idx
    root = Path("/usr/share/datasets/fashion-mnist")
    if not root.exists():
        pytest.skip("Fashion-MNIST is not on this machine")
    x = read_idx(root / "t10k-images-idx3-ubyte.gz")[:600]
    y = read_idx(root / "t10k-labels-idx1-ubyte.gz")[:600]
    np.savez(tmp_path / "fm.npz", images=x, labels=y)
    ingest_local(store, str(tmp_path / "fm.npz"), "fm600")
    cr.run_local(store, "fm600", cr.ClusterParams(k=10, n_components=20), run_id="fm")
    rep = fs.compare_local(store, "fm", fs.FeatureParams(spaces=["pixels", "pca"], **FAST))
    assert [r["space"] for r in rep["table"]] == ["pixels", "pca"]
    assert all(r["knn_100%"] > 0.5 and r["nmi"] > 0.3 for r in rep["table"])
