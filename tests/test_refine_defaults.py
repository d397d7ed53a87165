"""`cci refine`'s defaults (contrastive start, UMAP + GMM on the embedding joined with the
pixel components, trusted-row rounds) on scikit-learn's digits ingested at 28x28, the way
`cci run builtin:digits` does: the same defaults as Fashion-MNIST, no per-corpus setting,
and labels only score. Also: an interrupted contrastive refinement resumes exactly."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from cci_core.cluster.cluster_metrics import cluster_acc
from cci_core.ingest.ingest import ingest_local
from cci_core.refine.config import RefineConfig
from cci_core.refine.refine import refine
from cci_core.store.corpus import open_corpus
from cci_core.store.store import Store


@pytest.fixture(scope="module")
def digits28(tmp_path_factory):
    store = Store(str(tmp_path_factory.mktemp("store")))
    ingest_local(store, "builtin:digits", "digits28", size=(28, 28))
    c = open_corpus(store, "digits28")
    images = np.asarray(c.images()[:c.n_rows])
    import pandas as pd
    y = pd.factorize(c.labels())[0]
    start = np.arange(len(images)) % 10  # the contrastive start only takes k and the ids from it
    return images, start, y


def test_builtin_digits_refine_to_095_acc_with_the_defaults(digits28, tmp_path):
    images, start, y = digits28
    before = torch.get_num_threads()
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # batches of 256: every core helps
    try:
        res = refine(images, None, start, RefineConfig(), tmp_path, y_true=y, log=lambda s: None)
    finally:
        torch.set_num_threads(before)
    acc = cluster_acc(y, res.labels)
    assert acc >= 0.95, [(h["round"], h["acc"], h["nmi"]) for h in res.history]
    # the kept round is chosen without labels, and the history says how it started
    assert res.chosen_round == max(res.history, key=lambda h: h["selection_score"])["round"]
    assert res.history[0]["cl_steps"] > 0 and res.history[0]["cl_images_per_s"] > 0


def test_interrupted_contrastive_refinement_resumes_to_the_same_result(digits28, tmp_path):
    images, start, y = digits28
    small = dict(rounds=1, cl_epochs=1, cl_min_steps=0, warmup_steps=30, steps=30, batch_size=64, width=8, embed_dim=16,
                 silhouette_sample=500, seed=5)
    whole = refine(images, None, start, RefineConfig(**small), tmp_path / "whole", log=lambda s: None)

    def interrupt(line):
        if line.startswith("round 0"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        refine(images, None, start, RefineConfig(**small), tmp_path / "cut", log=interrupt)
    resumed = refine(images, None, start, RefineConfig(**small), tmp_path / "cut", log=lambda s: None)
    assert np.array_equal(whole.labels, resumed.labels)
    for name in ("classifier.safetensors", "labels.npy"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "cut" / name).read_bytes(), name
