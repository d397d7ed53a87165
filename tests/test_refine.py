"""CCI refinement on scikit-learn's digits (padded to 28x28): quality holds or improves,
ids stay stable, resume is exact, labels are never read for training, bad input fails
clearly, and assign labels new images."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import normalized_mutual_info_score as nmi

from cci_core.cluster.cluster_metrics import match_labels
from cci_core.cluster.kmeans import MiniBatchKMeans
from cci_core.cluster.pca import PCA
from cci_core.predict.assign import assign_centroids, assign_classifier
from cci_core.refine.classifier import load_classifier
from cci_core.refine.config import RefineConfig
from cci_core.refine.refine import refine
from cci_core.store.weights import load_weights

# small and fast: k-means re-clustering, no autoencoder start (tests/test_autoencoder.py)
CFG = dict(rounds=2, start="given", recluster="kmeans", warmup_steps=300, steps=150,
           batch_size=64, trust_quantile=0.8, width=8, depth=2, embed_dim=16, pca_dim=16,
           silhouette_sample=800, seed=3, flip=False)


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    small = (d.images * (255 / 16)).round().astype(np.uint8)
    images = np.zeros((len(small), 28, 28, 1), np.uint8)
    images[:, 2:26, 2:26, 0] = np.kron(small, np.ones((3, 3), np.uint8))  # 8x8 -> 24x24
    feats = PCA(20).fit_transform(images.reshape(len(images), -1) / 255.0)
    init = MiniBatchKMeans(10, batch_size=512, random_state=0).fit(np.asarray(feats)).labels_
    return images, init.astype(np.int64), d.target


@pytest.fixture(scope="module")
def run(digits, tmp_path_factory):
    images, init, y = digits
    out = tmp_path_factory.mktemp("refine")
    torch.set_num_threads(1)  # fast and deterministic for these tiny batches
    res = refine(images, None, init, RefineConfig(**CFG), out, y_true=y, log=lambda s: None)
    return res, out


def test_refinement_holds_or_improves_nmi(digits, run):
    images, init, y = digits
    res, out = run
    start = nmi(y, init)
    assert nmi(y, res.labels) >= start - 0.01, (start, res.history)
    assert (out / "metrics.json").exists() and (out / "curves.png").stat().st_size > 0
    for h in res.history:
        assert {"acc", "nmi", "ari", "silhouette", "inertia", "selection_score",
                "knn_consistency", "trusted", "train_images_per_s"} <= set(h)
    # the round kept is the best by the unsupervised score, never by the labels
    assert res.chosen_round == max(res.history, key=lambda h: h["selection_score"])["round"]


def test_cluster_ids_stay_stable_across_rounds(digits, run):
    _, init, _ = digits
    _, out = run
    prev = init
    for r in (1, 2):
        cur = np.load(out / f"round-{r:02d}" / "labels.npy").astype(np.int64)
        # the ids are already the Hungarian-best match to the previous round's
        assert np.array_equal(match_labels(prev, cur, 10), cur)
        assert (cur == prev).mean() > 0.5
        prev = cur


def test_resume_after_interruption_gives_the_same_weights(digits, run, tmp_path):
    images, init, y = digits
    _, full = run

    def interrupt(line):
        if line.startswith("round 2"):
            raise KeyboardInterrupt  # before round 2 is saved
    with pytest.raises(KeyboardInterrupt):
        refine(images, None, init, RefineConfig(**CFG), tmp_path, y_true=y, log=interrupt)
    assert (tmp_path / "round-01" / "_DONE").exists() and not (tmp_path / "round-02").exists()
    lines = []
    refine(images, None, init, RefineConfig(**CFG), tmp_path, y_true=y, log=lines.append)
    assert lines[0].startswith("resuming after round 1")
    a, _ = load_weights(full, "classifier")
    b, _ = load_weights(tmp_path, "classifier")
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_training_never_reads_the_labels(digits, run, tmp_path):
    images, init, y = digits
    _, full = run
    shuffled = np.random.default_rng(0).permutation(y)
    cfg = RefineConfig(**{**CFG, "rounds": 1})
    res = refine(images, None, init, cfg, tmp_path, y_true=shuffled, log=lambda s: None)
    a, _ = load_weights(full / "round-01", "classifier")
    b, _ = load_weights(tmp_path / "round-01", "classifier")
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert res.history[0]["nmi"] != pytest.approx(nmi(y, init))  # it did score the shuffled ones


def test_bad_input_is_a_clear_error_and_writes_nothing(digits, tmp_path):
    images, init, _ = digits
    with pytest.raises(ValueError, match="fewer than one batch"):
        refine(images[:50], None, init[:50], RefineConfig(**CFG), tmp_path / "a")
    with pytest.raises(ValueError, match="initial_labels"):
        refine(images, None, init[:-1], RefineConfig(**CFG), tmp_path / "b")
    with pytest.raises(ValueError, match="recluster"):
        RefineConfig(recluster="spectral")
    assert not any(tmp_path.iterdir())


def test_assign_with_classifier_and_centroids(digits, run):
    images, _, _ = digits
    res, out = run
    model = load_classifier(out, "cpu")
    labels, conf = assign_classifier(model, images, n_rows=1000, batch_size=300)
    assert labels.shape == conf.shape == (1000,)
    assert ((conf > 0) & (conf <= 1)).all()
    assert (labels == res.labels[:1000]).mean() > 0.7
    with pytest.raises(ValueError, match="expects"):
        assign_classifier(model, np.zeros((10, 32, 32, 3), np.uint8))

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 5))
    x = centers[rng.integers(0, 4, 500)] + 0.1 * rng.normal(size=(500, 5))
    lab, c = assign_centroids(x, centers, batch_size=128)
    brute = ((x[:, None] - centers[None]) ** 2).sum(-1).argmin(1)
    assert np.array_equal(lab, brute) and (c > 0.5).mean() > 0.9
