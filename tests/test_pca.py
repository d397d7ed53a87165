"""PCA solvers against scikit-learn's exact PCA on real images; persistence; bad input."""
import dask.array as da
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA as SkPCA

from cci_core.cluster.features import image_features
from cci_core.cluster.pca import PCA, fit_pca
from cci_core.ingest.idx import read_idx

FMNIST = "/usr/share/datasets/fashion-mnist/"

@pytest.fixture(scope="module")
def fmnist():
    images = read_idx(FMNIST + "t10k-images-idx3-ubyte.gz")[:6000]
    X = images.reshape(len(images), -1).astype(np.float64) / 255
    return images, X, SkPCA(20, svd_solver="covariance_eigh").fit(X)


def _agree(ours, ref, n, var_rtol, cos_min):
    np.testing.assert_allclose(ours.explained_variance_[:n], ref.explained_variance_[:n], rtol=var_rtol)
    cos = np.abs((ours.components_[:n] * ref.components_[:n]).sum(axis=1))
    assert cos.min() > cos_min
    np.testing.assert_allclose(ours.mean_, ref.mean_, atol=1e-6)


def test_cov_solver_matches_sklearn_on_lazy_features(fmnist):
    images, _, ref = fmnist
    X = image_features(images, chunk_rows=1000)  # lazy float32, 6 blocks
    ours = PCA(20).fit(X)
    _agree(ours, ref, 20, 1e-5, 0.9999)
    np.testing.assert_allclose(ours.explained_variance_ratio_, ref.explained_variance_ratio_, atol=1e-7)
    # the same model whatever the chunking
    other = PCA(20).fit(image_features(images, chunk_rows=2500))
    np.testing.assert_allclose(other.components_, ours.components_, atol=1e-6)


def test_randomized_range_finder_matches_exact(fmnist):
    images, _, ref = fmnist
    X = image_features(images, chunk_rows=1000)
    ours = PCA(20, solver="randomized", n_oversamples=20, n_power_iter=5, random_state=0).fit(X)
    _agree(ours, ref, 10, 1e-3, 0.999)
    np.testing.assert_allclose(ours.explained_variance_ratio_.sum(),
                               ref.explained_variance_ratio_.sum(), rtol=1e-3)
    again = PCA(20, solver="randomized", n_oversamples=20, n_power_iter=5, random_state=0).fit(X)
    assert np.array_equal(again.components_, ours.components_)
    # without power iterations the range finder is visibly worse: the iterations do work
    rough = PCA(20, solver="randomized", n_oversamples=0, n_power_iter=0, random_state=0).fit(X)
    assert rough.explained_variance_.sum() < 0.99 * ours.explained_variance_.sum()


@pytest.mark.parametrize("solver", ["full", "tsqr"])
def test_dask_ml_solvers(solver):
    X = load_digits().data
    ref = SkPCA(10, svd_solver="full").fit(X)
    ours = PCA(10, solver=solver).fit(da.from_array(X, chunks=(600, -1)))
    _agree(ours, ref, 10, 1e-6, 0.99999)


def test_variance_ratio_whiten_transform_and_save(fmnist, tmp_path):
    images, X, _ = fmnist
    full = SkPCA(svd_solver="covariance_eigh").fit(X)
    want = int(np.searchsorted(np.cumsum(full.explained_variance_ratio_), 0.8) + 1)
    ours = fit_pca(image_features(images, chunk_rows=1500), 0.8, whiten=True)
    assert ours.n_components_ == want
    assert ours.explained_variance_ratio_.sum() >= 0.8
    Z = ours.transform(X.astype(np.float32))
    assert Z.shape == (len(X), want) and Z.dtype == np.float32
    np.testing.assert_allclose(Z.var(axis=0, ddof=1), 1.0, rtol=1e-3)
    lazy = ours.transform(image_features(images, chunk_rows=1500))
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), Z, atol=1e-4)
    ours.save(tmp_path)
    loaded = PCA.load(tmp_path)
    assert np.array_equal(loaded.transform(X[:50]), ours.transform(X[:50]))
    assert loaded.n_components_ == want and loaded.whiten
    assert not list(tmp_path.glob("*.pkl"))
    np.testing.assert_allclose(loaded.inverse_transform(Z[:5]),
                               PCA.load(tmp_path).inverse_transform(Z[:5]))


def test_bad_input():
    X = load_digits().data
    with pytest.raises(ValueError, match="at least 2 rows"):
        PCA(2).fit(X[:1])
    with pytest.raises(ValueError, match="zero variance"):
        PCA(2).fit(np.full((50, 64), 0.5))
    with pytest.raises(ValueError, match="zero variance"):
        PCA(2, solver="randomized").fit(np.zeros((50, 64)))
    with pytest.raises(ValueError, match="solver must be one of"):
        PCA(2, solver="magic").fit(X)
    with pytest.raises(ValueError, match="n_components must be an int"):
        PCA(65).fit(X)
    with pytest.raises(ValueError, match="full spectrum"):
        PCA(0.9, solver="randomized").fit(X)
    with pytest.raises(ValueError, match="not fitted"):
        PCA(2).transform(X)


def test_auto_solver_is_exact_for_small_images_and_randomized_for_large():
    rng = np.random.default_rng(0)
    small = PCA(5, random_state=0).fit(rng.random((200, 28 * 28)))
    assert small.solver_ == "cov"
    # a 100x60 RGB image has 18,000 values: its covariance alone would be 2.6 GB
    large = da.from_array(rng.random((120, 18_000)).astype(np.float32), chunks=(60, 18_000))
    pca = PCA(5, random_state=0).fit(large)
    assert pca.solver_ == "randomized" and pca.components_.shape == (5, 18_000)
    assert PCA(0.5, random_state=0).fit(rng.random((200, 50))).solver_ == "cov"  # a ratio needs the spectrum
