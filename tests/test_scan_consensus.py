"""The re-clustering's consensus: SCAN heads' votes and the GMM's, on constructed embeddings."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from cci_core.cluster.cluster_metrics import cluster_acc
from cci_core.refine.config import RefineConfig
from cci_core.refine.rounds import cluster_embedding, gmm_from_partition
from cci_core.refine.scan import mine_neighbours, scan_head_votes


def blobs(n_per: int = 100, k: int = 4, dim: int = 16, spread: float = 0.3, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (k, dim))
    truth = np.repeat(np.arange(k), n_per)
    return (centres[truth] + rng.normal(0, spread, (len(truth), dim))).astype(np.float32), truth


def test_head_votes_are_probability_blocks_and_repeat_under_a_seed():
    X, truth = blobs()
    nb = mine_neighbours(X, 10)
    votes = scan_head_votes(X, nb, 4, n_heads=3, epochs=5, batch_size=100, seed=0)
    assert votes.shape == (len(X), 3 * 4) and votes.dtype == np.float32
    assert np.allclose(votes.reshape(len(X), 3, 4).sum(-1), 1, atol=1e-5)
    assert np.array_equal(votes, scan_head_votes(X, nb, 4, n_heads=3, epochs=5, batch_size=100, seed=0))
    assert not np.array_equal(votes, scan_head_votes(X, nb, 4, n_heads=3, epochs=5, batch_size=100, seed=1))


def test_consensus_recovers_separated_groups():
    X, truth = blobs()
    labels, space, margin = cluster_embedding(X, 4, RefineConfig(knn=10, umap_neighbors=15, umap_dim=4), seed=0)
    assert labels.shape == truth.shape and space.shape == (len(X), 4)
    assert cluster_acc(truth, labels) > 0.95
    assert margin.min() >= 0 and margin.max() <= 1


def test_the_gmm_counts_as_gmm_votes_heads():
    # an arc of 300 directions and a blob of 60 (rows are compared by direction): the GMM and
    # the heads cut the arc in different places, and the weight decides between them
    rng = np.random.default_rng(0)
    angle = np.linspace(0, np.pi / 2, 300)[:, None]
    line = np.cos(angle) * np.eye(16)[0] + np.sin(angle) * np.eye(16)[2] + rng.normal(0, 0.005, (300, 16))
    blob = np.eye(16)[1] + rng.normal(0, 0.05, (60, 16))
    X = np.concatenate([line, blob]).astype(np.float32)
    cfg = dict(knn=10, umap_neighbors=15, umap_dim=4, gmm_polish=False)
    gmm, _, _ = cluster_embedding(X, 2, RefineConfig(**cfg, scan_heads=0), seed=0)
    heads, _, _ = cluster_embedding(X, 2, RefineConfig(**cfg, gmm_votes=0), seed=0)
    outvoted, _, _ = cluster_embedding(X, 2, RefineConfig(**cfg, gmm_votes=1e6), seed=0)
    assert adjusted_rand_score(gmm, heads) < 0.9
    assert adjusted_rand_score(gmm, outvoted) == 1.0  # a GMM worth 10^6 heads decides


def test_the_gmm_polish_starts_from_the_partition_and_moves_its_boundaries():
    X, truth = blobs(n_per=150, k=3, dim=4, spread=0.2)
    wrong = truth.copy()
    wrong[::5] = (truth[::5] + 1) % 3  # a fifth of the rows in the wrong cluster
    gmm = gmm_from_partition(X, wrong, 3, seed=0)
    assert np.allclose(gmm.means_init, [X[wrong == c].mean(0) for c in range(3)])
    fixed = gmm.fit(X).predict(X)
    # EM keeps the partition's cluster ids (no relabelling) and repairs its boundaries
    assert (fixed == truth).mean() > 0.98 > (wrong == truth).mean()
    # an empty cluster or one smaller than the dimension still gives a valid start
    sparse = np.where(truth == 2, 0, truth)
    sparse[:2] = 3
    fitted = gmm_from_partition(X, sparse, 5, seed=0).fit(X)
    assert fitted.weights_.shape == (5,) and np.isfinite(fitted.means_).all()


def test_the_polish_gives_the_gmm_optimum_next_to_the_consensus():
    X, _ = blobs()
    cfg = dict(knn=10, umap_neighbors=15, umap_dim=4)
    polished, space, margin = cluster_embedding(X, 4, RefineConfig(**cfg), seed=0)
    consensus, _, _ = cluster_embedding(X, 4, RefineConfig(**cfg, gmm_polish=False), seed=0)
    assert adjusted_rand_score(polished, consensus) > 0.9
    # a fixed point: one more EM run from the polished partition keeps it
    again = gmm_from_partition(space, polished, 4, seed=0).fit(space).predict(space)
    assert (again == polished).mean() > 0.99
    assert margin.min() >= 0 and margin.max() <= 1


@pytest.mark.parametrize("field,value", [("scan_heads", -1), ("gmm_votes", -0.5)])
def test_consensus_settings_are_checked(field, value):
    with pytest.raises(ValueError, match=field):
        RefineConfig(**{field: value})
