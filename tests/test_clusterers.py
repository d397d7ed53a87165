"""GMM / DBSCAN / HDBSCAN / agglomerative on a sample of real data, extended to all rows."""
import dask.array as da
import numpy as np
import pytest
from sklearn.cluster import AgglomerativeClustering
from sklearn.datasets import load_digits

from cci_core.cluster.cluster_metrics import cluster_acc, sample_rows
from cci_core.cluster.clusterers import fit_clusterer
from cci_core.cluster.pca import PCA


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    Z = PCA(16).fit_transform(X.astype(np.float32) / 16)
    return da.from_array(Z, chunks=(500, -1)), Z, y


@pytest.mark.parametrize("algorithm,min_acc", [("kmeans", 0.6), ("gmm", 0.6), ("agglomerative", 0.6)])
def test_k_algorithms_on_a_sample(digits, algorithm, min_acc):
    Zd, Z, y = digits
    res = fit_clusterer(Zd, algorithm, k=10, sample_size=800, seed=0)
    assert res.labels.shape == (len(Z),) and res.n_clusters == 10 and res.n_noise == 0
    assert cluster_acc(y, res.labels) > min_acc
    assert res.centers.shape == (10, Z.shape[1]) and np.isfinite(res.centers).all()
    if algorithm == "kmeans":
        assert res.sample_size == len(Z) and res.extension == ""
    else:
        assert res.sample_size == 800 and "sample of 800 of 1797" in res.extension
    again = fit_clusterer(Z, algorithm, k=10, sample_size=800, seed=0)
    assert np.array_equal(again.labels, res.labels)  # seeded, and numpy == dask


def test_agglomerative_extension_is_nearest_centroid(digits):
    Zd, Z, _ = digits
    res = fit_clusterer(Zd, "agglomerative", k=10, sample_size=600, seed=1)
    rows = sample_rows(len(Z), 600, 1)
    assert np.array_equal(res.labels[rows], res.model.labels_)
    cent = np.stack([Z[rows][res.model.labels_ == c].mean(0) for c in range(10)])
    rest = np.setdiff1d(np.arange(len(Z)), rows)
    nearest = np.argmin(((Z[rest, None, :] - cent[None]) ** 2).sum(-1), axis=1)
    assert np.array_equal(res.labels[rest], nearest)
    full = fit_clusterer(Z, "agglomerative", k=10, sample_size=len(Z))
    assert full.extension == ""
    assert np.array_equal(full.labels, AgglomerativeClustering(10).fit(Z).labels_)


def test_dbscan_extends_by_nearest_core_point_within_eps(digits):
    Zd, Z, _ = digits
    res = fit_clusterer(Zd, "dbscan", sample_size=900, seed=0, min_samples=5)
    eps = res.params["eps"]
    assert res.n_clusters >= 2 and 0 < res.n_noise < len(Z)
    rows = sample_rows(len(Z), 900, 0)
    core = Z[rows][res.model.core_sample_indices_]
    core_lab = res.model.labels_[res.model.core_sample_indices_]
    rest = np.setdiff1d(np.arange(len(Z)), rows)
    d = np.sqrt(((Z[rest, None, :] - core[None]) ** 2).sum(-1))
    want = np.where(d.min(1) <= eps, core_lab[d.argmin(1)], -1)
    assert np.array_equal(res.labels[rest], want)
    assert "nearest core point" in res.extension


def test_hdbscan_on_a_sample(digits):
    Zd, Z, y = digits
    res = fit_clusterer(Zd, "hdbscan", sample_size=1000, seed=0, min_cluster_size=15)
    assert res.n_clusters >= 3
    clustered = res.labels >= 0
    assert clustered.mean() > 0.3
    # what it does cluster, it clusters well
    assert cluster_acc(y[clustered], res.labels[clustered]) > 0.6
    assert res.summary()["sample_size"] == 1000


def test_bad_input(digits):
    _, Z, _ = digits
    with pytest.raises(ValueError, match="algorithm must be one of"):
        fit_clusterer(Z, "spectral", 3)
    with pytest.raises(ValueError, match="k must be >= 2"):
        fit_clusterer(Z, "gmm", 1)
    with pytest.raises(ValueError, match="more than the 5 rows"):
        fit_clusterer(Z[:5], "agglomerative", 6)


def test_assign_new_images_against_a_saved_clustering(tmp_path):
    import zarr

    from cci_core.cluster.clusterers import assign_images
    from cci_core.cluster.features import image_features
    from cci_core.cluster.kmeans import MiniBatchKMeans

    X, _ = load_digits(return_X_y=True)
    images = (X.reshape(-1, 8, 8, 1) * 255 / 16).astype(np.uint8)
    corpus = zarr.create_array(store=str(tmp_path / "images.zarr"), shape=(2000, 8, 8, 1),
                               chunks=(512, 8, 8, 1), dtype="uint8")
    corpus[:len(images)] = images  # rows past 1797 are uncommitted
    feats = image_features(corpus, n_rows=len(images))
    pca = PCA(12).fit(feats)
    km = MiniBatchKMeans(10, random_state=0).fit(pca.transform(feats))
    pca.save(tmp_path / "pca")
    km.save(tmp_path / "kmeans")
    pca2, km2 = PCA.load(tmp_path / "pca"), MiniBatchKMeans.load(tmp_path / "kmeans")
    assert np.array_equal(assign_images(corpus, pca2, km2, n_rows=len(images)), km.labels_)
    new = images[::7][:, ::-1]  # "new files": mirrored digits, in memory
    got = assign_images(new, pca2, km2)
    assert np.array_equal(got, km.predict(pca.transform(new.reshape(len(new), -1) / 255.0)))
    with pytest.raises(ValueError, match="resize"):
        assign_images(np.zeros((3, 9, 9, 1), np.uint8), pca2, km2)
