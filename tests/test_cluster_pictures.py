"""Choosing k, cluster montages and scatter plots, UMAP embedding — on real data."""
import dask.array as da
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from cci_core.cluster.choose_k import choose_k, elbow, parse_k_range
from cci_core.cluster.cluster_pictures import nearest_to_centers, save_cluster_montages, save_scatter
from cci_core.cluster.kmeans import MiniBatchKMeans
from cci_core.cluster.manifold import umap_embed
from cci_core.cluster.pca import PCA


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    images = (X.reshape(-1, 8, 8, 1) * 255 / 16).astype(np.uint8)
    Z = PCA(16).fit_transform(X.astype(np.float32) / 16)
    return images, Z, y


def test_parse_k_range_and_elbow():
    assert parse_k_range("5:8") == [5, 6, 7, 8]
    assert parse_k_range("4:12:4") == [4, 8, 12]
    assert parse_k_range("7") == [7]
    for bad in ("1:5", "9:3", "a:b", "1:2:3:4"):
        with pytest.raises(ValueError):
            parse_k_range(bad)
    ks = list(range(2, 11))
    assert elbow(ks, [100, 50, 10, 9, 8, 7, 6, 5, 4]) == 4
    assert elbow(ks, [1000 / k for k in ks]) < 6


def test_choose_k_scores_every_k(digits):
    _, Z, _ = digits
    res = choose_k(da.from_array(Z, chunks=(500, -1)), "6:14:2", sample_size=1500,
                   silhouette_size=800, seed=0)
    assert [s["k"] for s in res["scores"]] == [6, 8, 10, 12, 14]
    inertia = [s["inertia"] for s in res["scores"]]
    assert inertia[0] > inertia[-1]
    assert res["sample_size"] == 1500 and res["silhouette_sample_size"] == 800
    best = max(res["scores"], key=lambda s: s["silhouette"])
    assert res["k"] == best["k"] == res["silhouette_k"] and res["criterion"] == "silhouette"
    assert choose_k(Z, "6:14:2", sample_size=1500, criterion="elbow")["k"] == res["elbow_k"]
    with pytest.raises(ValueError, match="more than the"):
        choose_k(Z[:10], "5:11")


def test_montages_show_the_images_nearest_each_centre(digits, tmp_path):
    images, Z, _ = digits
    km = MiniBatchKMeans(10, random_state=0).fit(Z)
    Zd = da.from_array(Z, chunks=(400, -1))
    near = nearest_to_centers(Zd, km.labels_, km.cluster_centers_, 9)
    for c, rows in enumerate(near):
        assert (km.labels_[rows] == c).all()
        d_all = ((Z[km.labels_ == c] - km.cluster_centers_[c]) ** 2).sum(1)
        d_got = ((Z[rows] - km.cluster_centers_[c]) ** 2).sum(1)
        assert np.all(np.diff(d_got) >= 0)
        np.testing.assert_allclose(d_got, np.sort(d_all)[:9])
    paths = save_cluster_montages(images, Zd, km.labels_, km.cluster_centers_, tmp_path,
                                  n_per_cluster=9, scale=1)
    assert len(paths) == 11 and paths[-1].name == "clusters.png"
    first = np.asarray(Image.open(tmp_path / "cluster-0.png"))
    # top-left tile is the image nearest centre 0 (grid pad is 2 px)
    assert np.array_equal(first[2:10, 2:10], images[near[0][0], :, :, 0])
    assert np.asarray(Image.open(paths[-1])).shape[0] == 10 * (8 + 2) + 2


def test_scatter_png(digits, tmp_path):
    _, Z, y = digits
    labels = y.copy()
    labels[:50] = -1
    path = save_scatter(Z, labels, tmp_path / "scatter.png", max_points=1000)
    img = np.asarray(Image.open(path))
    assert img.shape[:2] == (600, 700) and img.std() > 0


def test_umap_on_a_sample_then_transform(digits):
    _, Z, y = digits
    emb, reducer, note = umap_embed(Z, n_components=5, n_neighbors=15, sample_size=1000, seed=0)
    assert emb.shape == (len(Z), 5) and np.isfinite(emb).all()
    assert "1000 of 1797" in note
    # rows UMAP only transformed land in their class's region: kNN on the embedding works
    from sklearn.neighbors import KNeighborsClassifier

    from cci_core.cluster.cluster_metrics import sample_rows
    fit_rows = sample_rows(len(Z), 1000, 0)
    rest = np.setdiff1d(np.arange(len(Z)), fit_rows)
    knn = KNeighborsClassifier(5).fit(emb[fit_rows], y[fit_rows])
    assert knn.score(emb[rest], y[rest]) > 0.85
