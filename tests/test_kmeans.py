"""Mini-batch k-means on real data: quality, determinism across chunkings and workers."""
import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster
from sklearn.cluster import MiniBatchKMeans as SkMiniBatchKMeans
from sklearn.datasets import load_digits
from sklearn.metrics import normalized_mutual_info_score

from cci_core.cluster.cluster_metrics import cluster_acc
from cci_core.cluster.kmeans import MiniBatchKMeans
from cci_core.cluster.pca import PCA
from cci_core.ingest.idx import read_idx

FMNIST = "/usr/share/datasets/fashion-mnist/"

@pytest.fixture(scope="module")
def fmnist():
    """Fashion-MNIST test split (10k) projected on 30 principal components."""
    X = read_idx(FMNIST + "t10k-images-idx3-ubyte.gz").reshape(10000, -1).astype(np.float32) / 255
    y = read_idx(FMNIST + "t10k-labels-idx1-ubyte.gz")
    Z = PCA(30).fit_transform(X)
    return Z, y


def test_quality_on_fashion_mnist(fmnist):
    Z, y = fmnist
    ours = MiniBatchKMeans(10, random_state=0).fit(Z)
    theirs = [SkMiniBatchKMeans(10, n_init=3, random_state=s).fit(Z) for s in range(3)]
    assert ours.inertia_ <= 1.02 * np.median([t.inertia_ for t in theirs])
    assert cluster_acc(y, ours.labels_) > 0.45
    assert normalized_mutual_info_score(y, ours.labels_) > 0.48
    assert ours.inertia_ == pytest.approx(-ours.score(Z), rel=1e-9)
    assert ours.cluster_centers_.shape == (10, 30) and np.isfinite(ours.cluster_centers_).all()


def test_same_seed_same_result_any_chunking(fmnist):
    Z, _ = fmnist
    ref = MiniBatchKMeans(10, random_state=7).fit(Z)
    again = MiniBatchKMeans(10, random_state=7).fit(Z)
    assert np.array_equal(ref.cluster_centers_, again.cluster_centers_)
    for chunks in (1000, 3333):
        m = MiniBatchKMeans(10, random_state=7).fit(da.from_array(Z, chunks=(chunks, -1)))
        assert np.array_equal(m.cluster_centers_, ref.cluster_centers_)
        assert np.array_equal(m.labels_, ref.labels_)
    other = MiniBatchKMeans(10, random_state=8).fit(Z)
    assert not np.array_equal(other.cluster_centers_, ref.cluster_centers_)


def test_same_partitions_on_one_and_two_worker_processes(fmnist):
    Z, _ = fmnist
    Zd = da.from_array(Z, chunks=(1250, -1))
    in_process = MiniBatchKMeans(10, random_state=3, n_init=2).fit(Zd)
    results = []
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=None) as cluster, Client(cluster):
            m = MiniBatchKMeans(10, random_state=3, n_init=2).fit(Zd)
            results.append((m, m.predict(Zd).compute()))
    for m, predicted in results:
        assert np.array_equal(m.labels_, in_process.labels_)
        assert np.array_equal(predicted, in_process.labels_)
        assert np.allclose(m.cluster_centers_, in_process.cluster_centers_, rtol=0, atol=1e-12)
        assert m.inertia_ == pytest.approx(in_process.inertia_, rel=1e-12)


def test_predict_transform_partial_fit_and_save(tmp_path):
    X = load_digits().data.astype(np.float32)
    m = MiniBatchKMeans(10, batch_size=256, random_state=0).fit(X)
    dist = m.transform(X)
    assert dist.shape == (len(X), 10)
    assert np.array_equal(np.argmin(dist, axis=1), m.predict(X))
    assert np.array_equal(m.predict(da.from_array(X, chunks=(500, -1))).compute(), m.labels_)
    m.save(tmp_path)
    loaded = MiniBatchKMeans.load(tmp_path)
    assert np.array_equal(loaded.predict(X), m.labels_)
    assert loaded.n_clusters == 10 and loaded.random_state == 0

    stream = MiniBatchKMeans(10, random_state=0)
    rng = np.random.default_rng(0)
    stream.partial_fit(X[rng.choice(len(X), 256)])
    first = stream.score(X)
    for _ in range(30):
        stream.partial_fit(X[rng.choice(len(X), 256)])
    assert stream.n_iter_ == 31
    assert stream.score(X) > first  # less inertia after more batches
    assert stream.counts_.sum() == 31 * 256


def test_every_cluster_used_after_reassignment():
    X = load_digits().data
    m = MiniBatchKMeans(40, batch_size=128, random_state=0, n_init=1).fit(X)
    assert np.bincount(m.labels_, minlength=40).min() > 0
    assert np.isfinite(m.cluster_centers_).all()


def test_bad_input_gives_clear_errors():
    X = load_digits().data
    with pytest.raises(ValueError, match="n_clusters must be an integer >= 2"):
        MiniBatchKMeans(1)
    with pytest.raises(ValueError, match="more than the 5 rows"):
        MiniBatchKMeans(6).fit(X[:5])
    with pytest.raises(ValueError, match="more than the 1 rows"):
        MiniBatchKMeans(2).fit(X[:1])
    with pytest.raises(ValueError, match="distinct rows"):
        MiniBatchKMeans(3).fit(np.ones((100, 4)))
    bad = X.copy()
    bad[5, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        MiniBatchKMeans(3).fit(bad)
    with pytest.raises(ValueError, match="not fitted"):
        MiniBatchKMeans(3).predict(X)
    with pytest.raises(ValueError, match="features"):
        MiniBatchKMeans(3).fit(X).predict(X[:, :10])
