"""Any image size (issue 29): the CCI CNN adapts small, non-square and large inputs on the device
(zero-padding, area shrinking, adaptive pooling), the autoencoder start decodes to its grid, and
``cci refine`` + ``cci predict`` work end to end on corpora of 16x8, 20x20, 48x48 and 100x60 RGB
(scikit-learn's digits resized by the real ingest into a real store, clustered with k-means)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_digits

from cci_core.cluster import cluster_run as cr
from cci_core.cluster.labels import read_labels
from cci_core.common.torch_data import CorpusImages
from cci_core.ingest.ingest import ingest_local
from cci_core.predict import predict as pr
from cci_core.refine import refine_run as rr
from cci_core.refine.autoencoder import pretrain_autoencoder
from cci_core.refine.classifier import load_classifier
from cci_core.refine.cnn import CNN, CNNConfig, adapt_images, internal_shape
from cci_core.store import runs
from cci_core.store.corpus import open_corpus
from cci_core.store.store import Store
from cci_core.store.weights import save_weights
from flows.preflight import PreflightError, check_pipeline

K, N = 4, 600
# tiny: a few contrastive and training steps, k-means re-clustering
TINY = {"rounds": 1, "start": "contrastive", "cl_epochs": 0.05, "cl_min_steps": 4, "warmup_steps": 6, "steps": 6,
        "batch_size": 64, "width": 4, "embed_dim": 16, "recluster": "kmeans", "pca_dim": 8, "pixel_dim": 8,
        "silhouette_sample": 300, "seed": 1}


@pytest.mark.parametrize("h,w,c,grid", [(5, 7, 1, (8, 8)), (16, 8, 1, (16, 8)), (48, 48, 1, (48, 48)),
                                        (100, 60, 3, (64, 38)), (28, 28, 1, (28, 28))])
def test_cnn_takes_any_shape(h, w, c, grid):
    torch.manual_seed(0)
    cfg = CNNConfig(in_channels=c, image_height=h, image_width=w, n_classes=5, width=4, depth=3, embed_dim=12)
    model = CNN(cfg).eval()
    x = torch.rand(3, c, h, w)
    assert cfg.grid == grid == internal_shape(h, w, 3)
    seen = model.adapt(x)
    assert tuple(seen.shape) == (3, c, *grid) and model.adapt(seen) is seen  # adapting twice = once
    if (h, w) == grid:
        assert seen is x  # sizes that fit pass unchanged (28/32/64 corpora train as before)
    z = model.embed(x)
    assert model(x).shape == (3, 5) and z.shape == (3, 12)
    assert torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-5)


def test_padding_is_centred_zeros_and_shrinking_averages():
    x = torch.ones(1, 1, 3, 5)
    y = adapt_images(x, depth=3)  # 2**3 = 8: padded to 8x8
    assert y.shape == (1, 1, 8, 8) and y.sum() == 15 and torch.equal(y[0, 0, 2:5, 1:6], torch.ones(3, 5))
    big = torch.rand(2, 3, 200, 300)
    small = adapt_images(big, depth=3)
    assert small.shape == (2, 3, 43, 64)  # a 200x300 corpus costs no more than 64x64
    assert torch.allclose(small.mean((2, 3)), big.mean((2, 3)), atol=0.02)


def test_old_square_configs_still_load(tmp_path):
    cfg = CNNConfig(in_channels=1, image_height=32, image_width=32, n_classes=3, width=4, depth=2, embed_dim=8)
    model = CNN(cfg).eval()
    old = {k: v for k, v in vars(cfg).items() if k not in ("image_height", "image_width", "max_side")}
    save_weights(tmp_path, model.state_dict(), {"cnn": {**old, "image_size": 32}}, name="classifier")
    again = load_classifier(tmp_path, "cpu")
    assert (again.config.image_height, again.config.image_width) == (32, 32)
    assert CNNConfig.from_dict({**old, "image_size": 32}) == cfg
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(model(x), again(x))


def test_autoencoder_start_at_a_non_square_size():
    torch.manual_seed(0)
    images = np.random.default_rng(0).integers(0, 256, (96, 13, 22, 3), dtype=np.uint8)
    model = CNN(CNNConfig(in_channels=3, image_height=13, image_width=22, n_classes=3, width=4, depth=2,
                          embed_dim=8))
    head = model.head.weight.detach().clone()
    out = pretrain_autoencoder(model, CorpusImages(images), 1, batch_size=32, seed=1)
    assert out["ae_steps"] == 3 and np.isfinite(out["ae_loss"])
    assert torch.equal(model.head.weight, head)


@pytest.fixture(scope="module")
def sized(tmp_path_factory):
    """One store, four corpora of N digits at other shapes, each clustered (k-means) and refined."""
    root = tmp_path_factory.mktemp("sizes")
    d = load_digits()
    np.savez(root / "digits.npz", images=(d.images[:N] * (255 / 16)).round().astype(np.uint8), labels=d.target[:N])
    store = Store(root / "store")
    for name, (h, w, c), depth in (("d16x8", (16, 8, 1), 4), ("d20", (20, 20, 1), 3), ("d48", (48, 48, 1), 3),
                                   ("rgb", (100, 60, 3), 3)):
        ingest_local(store, str(root / "digits.npz"), name, size=(h, w), channels=c)  # resized by ingest
        # the default PCA solver (auto) is randomized for 100x60x3: its covariance would be 18,000 x 18,000
        cr.run_local(store, name, cr.ClusterParams(k=K, n_components=10), run_id=f"{name}-km")
        rr.refine_local(store, f"{name}-km", rr.config_from_options({**TINY, "depth": depth}),
                        new_run_id=f"{name}-ref", log=lambda _: None)
    return store


@pytest.mark.parametrize("name,shape", [("d16x8", (16, 8, 1)), ("d20", (20, 20, 1)), ("d48", (48, 48, 1)),
                                        ("rgb", (100, 60, 3))])
def test_refine_and_predict_at_any_size(sized, name, shape, tmp_path):
    run = runs.read_run(sized, f"{name}-ref")
    assert run["status"] == "complete" and tuple(run["shape"]) == shape
    labels = read_labels(run["run_dir"])
    corpus = open_corpus(sized, name)
    assert labels.shape == (corpus.n_rows,) and set(np.unique(labels)) == set(range(K))
    # the stored classifier records the corpus shape
    cnn = json.loads((sized.run_dir(f"{name}-ref") / "classifier" / "classifier.json").read_text())["cnn"]
    assert (cnn["in_channels"], cnn["image_height"], cnn["image_width"], cnn["n_classes"]) == (shape[2], *shape[:2], K)
    # predicting with the refined classifier: one cluster and a confidence per image
    images = corpus.read_images(slice(0, 300))
    pred = pr.predict(sized, f"{name}-ref", images)
    assert pr.load_predictor(sized, f"{name}-ref").method == "cci classifier"
    assert len(pred) == 300 and pred["cluster"].between(0, K - 1).all()
    assert pred["confidence"].between(1 / K - 1e-6, 1).all()
    # a weights round trip gives the same classifier
    model = load_classifier(run["classifier"], "cpu")
    save_weights(tmp_path, model.state_dict(), {"cnn": cnn}, name="classifier")
    again = load_classifier(tmp_path, "cpu")
    x = CorpusImages(images).batch(np.arange(16))
    assert torch.equal(model(x), again(x))
    assert np.array_equal(again(x).argmax(1).numpy(), pred["cluster"].to_numpy()[:16])


def test_cli_predict_with_a_refined_classifier_on_rgb(sized, run_cci, tmp_path):
    out = tmp_path / "labels.parquet"
    res = run_cci("predict", "rgb-ref", "builtin:digits", "--store", sized.root, "-o", out)
    assert res.returncode == 0, res.stderr[-2000:]
    df = pd.read_parquet(out)
    assert len(df) == 1797 and df["cluster"].between(0, K - 1).all() and df["cluster"].nunique() > 1


def test_cci_run_refuses_a_size_the_generators_cannot_make_before_any_stage(tmp_path):
    store = Store(tmp_path / "store")
    counts = {"--refine-steps": 1}
    check_pipeline(store, "builtin:digits", "d", (32, 32), 1, None, 4, counts)
    for size in ((20, 20), (16, 8)):
        with pytest.raises(PreflightError, match=f"--size {size[0]}x{size[1]}: .*cci refine"):
            check_pipeline(store, "builtin:digits", "d", size, 1, None, 4, counts)
