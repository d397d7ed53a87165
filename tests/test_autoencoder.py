"""Autoencoder pre-training of the CCI classifier's trunk: it learns (loss falls), it is
seeded (same weights twice on CPU), it leaves the classification head alone, and a
refinement that starts from it re-clusters the code with stable ids."""
import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits

from cci_core.cluster.cluster_metrics import match_labels
from cci_core.common.torch_data import CorpusImages
from cci_core.refine.autoencoder import Decoder, pretrain_autoencoder
from cci_core.refine.cnn import CNN, CNNConfig
from cci_core.refine.config import RefineConfig
from cci_core.refine.refine import refine


def _digits(n=600):
    d = load_digits()
    small = (d.images[:n] * (255 / 16)).round().astype(np.uint8)
    images = np.zeros((len(small), 28, 28, 1), np.uint8)
    images[:, 2:26, 2:26, 0] = np.kron(small, np.ones((3, 3), np.uint8))
    return images, d.target[:n]


def _model():
    torch.manual_seed(0)
    return CNN(CNNConfig(width=4, depth=2, embed_dim=8, n_classes=10))


def test_decoder_shapes():
    for grid, ch in (((28, 28), 1), ((32, 32), 3), ((64, 64), 3), ((13, 22), 3), ((16, 8), 1)):
        assert Decoder(8, ch, grid, 4)(torch.zeros(2, 8)).shape == (2, ch, *grid)


def test_pretraining_learns_is_seeded_and_leaves_the_head():
    torch.set_num_threads(1)
    images, _ = _digits()
    data = CorpusImages(images)
    short = pretrain_autoencoder(_model(), data, 0.5, batch_size=64, seed=1)
    a, b = _model(), _model()
    head = a.head.weight.detach().clone()
    long = pretrain_autoencoder(a, data, 4, batch_size=64, seed=1)
    pretrain_autoencoder(b, data, 4, batch_size=64, seed=1)
    assert long["ae_loss"] < short["ae_loss"]
    assert torch.equal(a.head.weight, head)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[key], sb[key]) for key in sa)


def test_refine_round_zero_clusters_the_autoencoder_code(tmp_path):
    torch.set_num_threads(1)
    images, y = _digits()
    init = KMeans(10, n_init=1, random_state=0).fit(images.reshape(len(images), -1) / 255.0).labels_
    init = init.astype(np.int64)  # gives k and the ids; round 0 re-clusters the code
    cfg = RefineConfig(rounds=0, start="autoencoder", ae_epochs=2, recluster="kmeans", warmup_steps=20,
                       batch_size=64, width=4, depth=2, embed_dim=8, pca_dim=8,
                       silhouette_sample=300, seed=1)
    res = refine(images, None, init, cfg, tmp_path, y_true=y, log=lambda s: None)
    h = res.history[0]
    assert h["ae_steps"] > 0 and h["ae_images_per_s"] > 0
    assert h["nmi"] > 0.15 and h["changed"] > 0  # a clustering of its own, not the given one
    assert np.array_equal(match_labels(init, res.labels, 10), res.labels)
