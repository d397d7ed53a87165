"""Clustering metrics against scikit-learn's on real data (digits)."""
import itertools

import dask.array as da
import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits

from cci_core.cluster.cluster_metrics import cluster_acc, clustering_report, match_labels, purity, silhouette


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    km = KMeans(10, n_init=1, random_state=0).fit(X)
    return X, y, km.labels_, km.cluster_centers_, km.inertia_


@pytest.mark.parametrize("as_dask", [False, True])
def test_report_matches_sklearn(digits, as_dask):
    X, y, lab, centers, inertia = digits
    Xin = da.from_array(X, chunks=(400, -1)) if as_dask else X
    r = clustering_report(Xin, lab, centers, y_true=y, sample_size=5000, seed=0)
    assert r["inertia"] == pytest.approx(inertia, rel=1e-9)
    assert r["silhouette_sample_size"] == len(X)
    assert r["silhouette"] == pytest.approx(skm.silhouette_score(X, lab), rel=1e-9)
    assert r["davies_bouldin"] == pytest.approx(skm.davies_bouldin_score(X, lab), rel=1e-9)
    assert r["calinski_harabasz"] == pytest.approx(skm.calinski_harabasz_score(X, lab), rel=1e-9)
    assert r["nmi"] == pytest.approx(skm.normalized_mutual_info_score(y, lab))
    assert r["ari"] == pytest.approx(skm.adjusted_rand_score(y, lab))
    assert r["sizes"] == np.bincount(lab, minlength=10).tolist()
    assert sum(r["sizes"]) == r["n_rows"] == len(X)
    assert 0.5 < r["acc"] <= r["purity"] <= 1


def test_sampled_silhouette_reports_sample(digits):
    X, _, lab, _, _ = digits
    score, used = silhouette(X, lab, sample_size=500, seed=3)
    assert used == 500
    assert abs(score - skm.silhouette_score(X, lab)) < 0.05
    assert silhouette(X, lab, sample_size=500, seed=3) == (score, used)


def test_cluster_acc_equals_brute_force():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    pred = np.where(rng.random(300) < 0.6, (y + 1) % 4, rng.integers(0, 4, 300))
    best = max(np.mean(np.array(p)[pred] == y) for p in itertools.permutations(range(4)))
    assert cluster_acc(y, pred) == pytest.approx(best)
    assert cluster_acc(y, (y + 2) % 4) == 1.0
    counts = np.zeros((4, 4), int)
    np.add.at(counts, (pred, y), 1)
    assert purity(y, pred) == pytest.approx(counts.max(1).sum() / 300)


def test_match_labels_recovers_permutation(digits):
    _, _, lab, _, _ = digits
    perm = np.random.default_rng(1).permutation(10)
    assert (match_labels(lab, perm[lab], 10) == lab).all()
    noisy = perm[lab].copy()
    flip = np.random.default_rng(2).random(len(lab)) < 0.2
    noisy[flip] = np.random.default_rng(3).integers(0, 10, flip.sum())
    out = match_labels(lab, noisy, 10)
    assert (out == lab).mean() > 0.75
    # the relabelled partition is the same partition
    assert skm.adjusted_rand_score(out, noisy) == 1.0
    with pytest.raises(ValueError, match="outside"):
        match_labels(lab, lab, 5)


def test_noise_and_degenerate_clusterings_give_no_nan(digits):
    X, y, lab, _, _ = digits
    noisy = lab.copy()
    noisy[:100] = -1
    r = clustering_report(X, noisy, y_true=y)
    assert r["n_noise"] == 100 and sum(r["sizes"]) == len(X) - 100
    keep = noisy >= 0
    assert r["davies_bouldin"] == pytest.approx(skm.davies_bouldin_score(X[keep], noisy[keep]))
    one = clustering_report(X, np.zeros(len(X), int), y_true=y)
    assert one["silhouette"] is None and one["davies_bouldin"] is None
    assert one["calinski_harabasz"] is None and one["n_clusters"] == 1
    for value in one.values():
        assert not (isinstance(value, float) and np.isnan(value))
    with pytest.raises(ValueError, match="rows"):
        clustering_report(X, lab[:-1])
