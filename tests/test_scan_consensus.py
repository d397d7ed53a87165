"""The re-clustering's consensus: SCAN heads' votes and the GMM's, on constructed embeddings."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from cci_core.cluster.cluster_metrics import cluster_acc
from cci_core.refine.config import RefineConfig
from cci_core.refine.rounds import cluster_embedding
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
    cfg = dict(knn=10, umap_neighbors=15, umap_dim=4)
    gmm, _, _ = cluster_embedding(X, 2, RefineConfig(**cfg, scan_heads=0), seed=0)
    heads, _, _ = cluster_embedding(X, 2, RefineConfig(**cfg, gmm_votes=0), seed=0)
    outvoted, _, _ = cluster_embedding(X, 2, RefineConfig(**cfg, gmm_votes=1e6), seed=0)
    assert adjusted_rand_score(gmm, heads) < 0.9
    assert adjusted_rand_score(gmm, outvoted) == 1.0  # a GMM worth 10^6 heads decides


@pytest.mark.parametrize("field,value", [("scan_heads", -1), ("gmm_votes", -0.5)])
def test_consensus_settings_are_checked(field, value):
    with pytest.raises(ValueError, match=field):
        RefineConfig(**{field: value})
