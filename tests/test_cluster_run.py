"""A clustering run through the library steps: files, lineage, metrics, determinism,
prediction, the other algorithms, bad input, and the Fashion-MNIST acceptance figures."""
from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from PIL import Image
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from cci_core.cluster import cluster_run as cr
from cci_core.cluster.cluster_metrics import cluster_acc
from cci_core.cluster.labels import write_labels
from cci_core.cluster.records import ClusteringSummary, ClusterPlan, EmbeddingsSummary
from cci_core.ingest.ingest import ingest_local
from cci_core.predict import predict as pr
from cci_core.store import runs
from cci_core.store.corpus import UnknownCorpusError, open_corpus
from cci_core.store.lineage import LineageStore
from cci_core.store.store import Store

FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def digits_store(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("store"))
    ingest_local(store, "builtin:digits", "digits")
    return store


def test_kmeans_run_writes_every_artifact_with_lineage(digits_store):
    plan = run = cr.run_local(digits_store, "digits", cr.ClusterParams(k=10, n_components=30))
    rdir = Path(plan["run_dir"])
    assert run["status"] == "complete"
    emb = zarr.open_array(str(rdir / "embeddings.zarr"), mode="r")
    assert emb.shape == (1797, 30) and emb.dtype == np.float32 and np.isfinite(emb[:]).all()
    assert (rdir / "pca" / "pca.safetensors").exists() and (rdir / "clustering" / "kmeans.safetensors").exists()

    labels = cr.run_labels(plan)
    parts = run["partitions"]
    assert [p["cluster"] for p in parts] == list(range(10))
    assert sum(p["count"] for p in parts) == 1797
    rows = np.concatenate([cr.partition_rows(digits_store, plan["run_id"], c) for c in range(10)])
    assert np.array_equal(np.sort(rows), np.arange(1797))
    assert np.array_equal(np.sort(cr.partition_rows(digits_store, plan["run_id"], 3)), np.flatnonzero(labels == 3))

    # the report agrees with scikit-learn on the same labels
    report = pd.read_json(rdir / "reports" / "metrics.json", typ="series")
    y = open_corpus(digits_store, "digits").labels().astype(int)
    assert report["nmi"] == pytest.approx(normalized_mutual_info_score(y, labels))
    assert report["ari"] == pytest.approx(adjusted_rand_score(y, labels))
    assert report["acc"] == pytest.approx(cluster_acc(y, labels)) and report["acc"] > 0.7
    assert report["silhouette_sample_size"] == 1797 and -1 < report["silhouette"] < 1
    assert report["sizes"] == [p["count"] for p in parts]
    for key in ("inertia", "davies_bouldin", "calinski_harabasz", "purity"):
        assert np.isfinite(report[key])

    lin = LineageStore(digits_store.lineage_url)
    part = lin.get(parts[4]["artifact_id"])
    roles = {role: aid for aid, role in part.inputs}
    assert set(roles) == {"corpus", "pca", "clustering"}
    assert roles["corpus"] == plan["corpus_artifact_id"] and part.metrics["count"] == parts[4]["count"]
    assert part.params["k"] == 10 and part.params["n_components"] == 30 and part.params["cluster"] == 4
    clustering = lin.get(roles["clustering"])
    assert {r for _, r in clustering.inputs} == {"features", "pca", "corpus"}

    pics = sorted(p.name for p in (rdir / "pictures").iterdir())
    assert "clusters.png" in pics and "scatter-pca.png" in pics and "cluster-9.png" in pics
    with Image.open(rdir / "pictures" / "cluster-0.png") as im:
        assert im.size[0] > 28 and im.size[1] > 0


def test_same_seed_same_partitions_and_new_seed_is_a_new_run(digits_store):
    a = cr.run_local(digits_store, "digits", cr.ClusterParams(k=8, seed=3))
    b = cr.run_local(digits_store, "digits", cr.ClusterParams(k=8, seed=3))
    assert a["run_id"] != b["run_id"]
    assert np.array_equal(cr.run_labels(a), cr.run_labels(b))


def test_k_range_is_chosen_and_scored_in_the_report(digits_store):
    plan = run = cr.run_local(digits_store, "digits", cr.ClusterParams(k="6:12:2"))
    choice = run["choose_k"]
    assert [s["k"] for s in choice["scores"]] == [6, 8, 10, 12]
    assert choice["k"] in (6, 8, 10, 12) and run["clustering"]["k"] == choice["k"]
    assert run["clustering"]["n_clusters"] == choice["k"]
    report = pd.read_json(Path(plan["run_dir"]) / "reports" / "metrics.json", typ="series")
    assert report["choose_k"]["criterion"] == "silhouette"


def test_predict_corpus_rows_and_files_against_a_run(digits_store, tmp_path):
    plan = cr.run_local(digits_store, "digits", cr.ClusterParams(k=10))
    c = open_corpus(digits_store, "digits")
    df = pr.predict(digits_store, plan["run_id"], c.images()[:400], batch_size=128)
    assert np.array_equal(df["cluster"].to_numpy(), cr.run_labels(plan)[:400])
    assert ((df["confidence"] >= 0) & (df["confidence"] <= 1)).all()

    folder = tmp_path / "new"
    folder.mkdir()
    pixels = c.read_images(np.arange(5))
    for i, p in enumerate(pixels):  # saved at 4x the size: resized back like ingest does
        Image.fromarray(p[..., 0]).resize((32, 32), Image.NEAREST).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    got, quarantine = pr.predict_source(digits_store, plan["run_id"], str(folder))
    assert len(got) == 5 and [Path(q["source"]).name for q in quarantine] == ["broken.png"]
    order = got.sort_values("source")
    assert np.array_equal(order["cluster"].to_numpy(), cr.run_labels(plan)[:5])

    with pytest.raises(ValueError, match="8x8x1 images"):
        pr.predict(digits_store, plan["run_id"], np.zeros((2, 9, 9, 1), np.uint8))
    with pytest.raises(LookupError, match="no run 'missing'"):
        pr.predict(digits_store, "missing", pixels)


@pytest.mark.parametrize("algorithm,embedding,k,min_nmi", [
    ("gmm", "pca", 10, 0.55), ("agglomerative", "pca", 10, 0.6), ("gmm", "umap", 10, 0.75),
    ("hdbscan", "pca", None, 0.2), ("dbscan", "pca", None, 0.0)])
def test_other_algorithms_run_on_a_sample_and_predict(digits_store, algorithm, embedding, k, min_nmi):
    params = cr.ClusterParams(k=k, algorithm=algorithm, embedding=embedding, sample_size=1000,
                              umap_neighbors=15, eps=4.0 if algorithm == "dbscan" else None, min_samples=5)
    plan = run = cr.run_local(digits_store, "digits", params)
    labels = cr.run_labels(plan)
    y = open_corpus(digits_store, "digits").labels().astype(int)
    assert normalized_mutual_info_score(y, labels) >= min_nmi
    assert "seeded sample of 1000" in run["clustering"]["extension"]
    report = pd.read_json(Path(plan["run_dir"]) / "reports" / "metrics.json", typ="series")
    assert report["extension"] == run["clustering"]["extension"]
    assert report["n_noise"] == int((labels < 0).sum())
    pred = pr.predict(digits_store, plan["run_id"], open_corpus(digits_store, "digits").images()[:300])
    assert (pred["cluster"].to_numpy() == labels[:300]).mean() > 0.8


def test_typed_records_give_back_the_same_dicts_and_the_steps_take_them(digits_store, tmp_path):
    plan = cr.start_run(digits_store, "digits", cr.ClusterParams(k=6, n_components=12))
    typed = ClusterPlan.from_json(plan)
    assert json.dumps(typed.to_json()) == json.dumps(plan)  # same keys, order and values
    assert typed.to_json() == runs.read_run(digits_store, typed.run_id)  # run.json on disk
    with pytest.raises(dataclasses.FrozenInstanceError):
        typed.params.k = 3  # type: ignore[misc]

    emb = cr.fit_embeddings(digits_store, typed)  # typed in, the same dict out
    assert json.dumps(EmbeddingsSummary.from_json(emb).to_json()) == json.dumps(emb) and "umap_note" not in emb
    cl = cr.cluster_step(digits_store, typed, EmbeddingsSummary.from_json(emb), 6)
    summary = ClusteringSummary.from_json(cl)
    assert json.dumps(summary.to_json()) == json.dumps(cl)
    assert cr.write_pictures(digits_store, typed, emb, summary)
    parts = cr.write_partitions(digits_store, typed, summary, [(emb["pca_artifact_id"], "pca")])
    assert sum(p["count"] for p in parts) == 1797
    run = runs.read_run(digits_store, typed.run_id)
    assert run["embeddings"] == emb and run["clustering"] == cl
    assert ClusterPlan.from_json(run) == typed  # a whole run.json reads as its plan

    umap = {**emb, "space": "space.zarr", "umap_note": "UMAP of 1797 rows", "umap_seconds": 1.5}
    assert list(EmbeddingsSummary.from_json(umap).to_json().items()) == list(umap.items())

    # the one labels writer: row int64 in order, image_id, cluster int32; the same bytes as the run's
    path = typed.dir / "clustering" / "labels.parquet"
    df = pd.read_parquet(path)
    assert list(df.columns) == ["row", "image_id", "cluster"]
    assert df["row"].dtype == np.int64 and df["cluster"].dtype == np.int32
    assert np.array_equal(df["row"].to_numpy(), np.arange(1797))
    again = write_labels(tmp_path / "clustering", open_corpus(digits_store, "digits"), cr.run_labels(typed))
    assert again == tmp_path / "clustering" / "labels.parquet" and again.read_bytes() == path.read_bytes()


def test_bad_input_is_one_clear_error_and_overwrites_nothing(digits_store, tmp_path):
    with pytest.raises(ValueError, match="k must be >= 2"):
        cr.start_run(digits_store, "digits", cr.ClusterParams(k=1))
    with pytest.raises(ValueError, match="more than the corpus's 1797 images"):
        cr.start_run(digits_store, "digits", cr.ClusterParams(k=1798))
    with pytest.raises(UnknownCorpusError, match="no corpus named 'nope'"):
        cr.start_run(digits_store, "nope", cr.ClusterParams())
    with pytest.raises(ValueError, match="--algorithm 'kmedoids'"):
        cr.start_run(digits_store, "digits", cr.ClusterParams(algorithm="kmedoids"))
    plan = cr.run_local(digits_store, "digits", cr.ClusterParams(k=5), run_id="fixed")
    before = (Path(plan["run_dir"]) / "clustering" / "labels.parquet").read_bytes()
    with pytest.raises(ValueError, match="already exists and is complete"):
        cr.start_run(digits_store, "digits", cr.ClusterParams(k=7), run_id="fixed")
    assert (Path(plan["run_dir"]) / "clustering" / "labels.parquet").read_bytes() == before

    store = Store(tmp_path / "s")
    np.save(tmp_path / "flat.npy", np.full((50, 8, 8), 7, np.uint8))
    # constant images: identical pixels dedup to one row, and one image cannot be clustered
    ingest_local(store, str(tmp_path / "flat.npy"), "flat")
    with pytest.raises(ValueError, match="has 1 image"):
        cr.start_run(store, "flat", cr.ClusterParams(k=2))
    assert not (store.root / "runs").exists()


def test_pca_is_fitted_on_evenly_spaced_blocks_of_a_large_corpus(digits_store):
    """Above ``pca_fit_rows`` the PCA sees whole blocks spread over the corpus (first and last
    included), enough of them for the rows asked; its components span nearly the same space as
    a fit on every row, and the run records how many rows it was fitted on."""
    import dask.array as da

    from cci_core.cluster.pca import PCA
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((5, 40))
    X = (rng.standard_normal((20000, 5)) * [5, 4, 3, 2, 1]) @ basis + 0.1 * rng.standard_normal((20000, 40))
    feats = da.from_array(X.astype(np.float32), chunks=(1000, 40))
    assert cr.fit_blocks(feats, 0) is feats and cr.fit_blocks(feats, 20000) is feats
    sub = cr.fit_blocks(feats, 4500)
    assert 4500 <= sub.shape[0] < 20000 and sub.shape[0] % 1000 == 0
    assert np.array_equal(sub.compute()[:1000], X[:1000].astype(np.float32))
    assert np.array_equal(sub.compute()[-1000:], X[-1000:].astype(np.float32))
    full, part = PCA(5).fit(feats), PCA(5).fit(sub)
    assert part.n_samples_ == sub.shape[0] and full.n_samples_ == 20000
    overlap = np.linalg.svd(full.components_ @ part.components_.T, compute_uv=False)  # cosines of the angles
    assert overlap.min() > 0.999

    run = cr.run_local(digits_store, "digits", cr.ClusterParams(k=10, n_components=20, pca_fit_rows=0))
    assert run["embeddings"]["pca_fit_rows"] == 1797
    with pytest.raises(ValueError, match="--pca-fit-rows 10"):
        cr.start_run(digits_store, "digits", cr.ClusterParams(pca_fit_rows=10))


def test_a_space_over_the_budget_is_clustered_on_dask_with_the_same_result(digits_store, monkeypatch):
    """The clustering and pictures steps read a space that fits the memory budget into memory;
    one over it stays a Dask array, pass by pass. Both give the same labels and report."""
    seen = []
    original = contextlib.contextmanager(cr.space_in_memory.__wrapped__)

    @contextlib.contextmanager
    def spy(X):
        with original(X) as got:
            seen.append(type(got).__name__)
            yield got
    monkeypatch.setattr(cr, "space_in_memory", spy)
    params = cr.ClusterParams(k=10, n_components=20, seed=3)
    here = cr.run_local(digits_store, "digits", params, run_id="space-here")
    monkeypatch.setattr("cci_core.common.memory.memory_budget_bytes", lambda: 0)
    on_dask = cr.run_local(digits_store, "digits", params, run_id="space-dask")
    assert seen == ["ndarray", "ndarray", "Array", "Array"]
    assert np.array_equal(cr.run_labels(here), cr.run_labels(on_dask))
    a, b = (pd.read_json(Path(r["run_dir"]) / "reports" / "metrics.json", typ="series") for r in (here, on_dask))
    for m in ("inertia", "silhouette", "davies_bouldin", "nmi", "acc"):
        assert a[m] == pytest.approx(b[m], rel=1e-6)


def test_nearly_constant_images_give_no_nan(tmp_path):
    store = Store(tmp_path / "s")
    imgs = np.full((20, 8, 8), 9, np.uint8)
    imgs[:, 0, 0] = np.arange(20)  # the rows differ in one pixel only: one direction of variance
    np.save(tmp_path / "a.npy", imgs)
    ingest_local(store, str(tmp_path / "a.npy"), "a")
    plan = run = cr.run_local(store, "a", cr.ClusterParams(k=3, n_components=1))
    assert np.isfinite(zarr.open_array(str(Path(plan["run_dir"]) / "embeddings.zarr"))[:]).all()
    assert all(np.isfinite(v) for v in run["clustering"]["metrics"].values())

    np.save(tmp_path / "b.npy", np.stack([np.full((8, 8), v, np.uint8) for v in range(0, 200, 10)]))
    ingest_local(store, str(tmp_path / "b.npy"), "b")
    plan = cr.start_run(store, "b", cr.ClusterParams(k=3, n_components=2, whiten=True))
    emb = cr.fit_embeddings(store, plan)  # rank one: the second whitened component must not be NaN
    cl = cr.cluster_step(store, plan, emb, 3)
    assert all(np.isfinite(v) for v in cl["metrics"].values())


@pytest.mark.skipif(not FMNIST.exists(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_70k_kmeans_reaches_the_issue_figures(tmp_path):
    store = Store(tmp_path / "store")
    ingest_local(store, str(FMNIST), "fmnist")
    run = cr.run_local(store, "fmnist", cr.ClusterParams(k=10, n_components=50))
    m = run["clustering"]["metrics"]
    assert len(run["clustering"]["sizes"]) == 10 and sum(run["clustering"]["sizes"]) == 70000
    assert m["acc"] >= 0.47 and m["nmi"] >= 0.50, m
