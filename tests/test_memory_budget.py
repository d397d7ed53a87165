"""The memory budget ($CCI_MEMORY_BUDGET_MB, cci_core/common/memory.py): refine, train and evaluate
read a corpus larger than the budget from Zarr in pieces and never hold all of it.

A 16,384-image RGB 32x32 corpus (50.3 MB of pixels, 16 Zarr chunks of 3 MB) and a budget of 1 MB.
Python's tracemalloc sees every numpy array (numpy reports its buffers to it), and every corpus read
makes one, so its peak during a step bounds what the step held of the corpus: it must stay under half
the corpus. What a step holds besides its budget is bounded by the chunk size, not by the corpus: one
batch, and Zarr's read buffers (compressed and decoded chunks, ~15 MB here). Zarr reads with
``async.concurrency`` 1 here; by default it reads up to 10 chunks at once, a bounded transient of its
own that would hide the steps' reads in a corpus this small.
"""
from __future__ import annotations

import contextlib
import tracemalloc

import numpy as np
import pytest
import zarr

from cci_core.cluster import cluster_run as cr
from cci_core.common.memory import ENV, memory_budget_bytes
from cci_core.common.torch_data import CorpusImages
from cci_core.generate import evaluation_run as ev
from cci_core.generate import training_run as tr
from cci_core.generate.settings import EvalParams, TrainParams
from cci_core.ingest.ingest import ingest_local
from cci_core.refine.config import RefineConfig
from cci_core.refine.refine_run import refine_local
from cci_core.store.corpus import open_corpus
from cci_core.store.store import Store

N, SIDE = 16384, 32
CORPUS_BYTES = N * SIDE * SIDE * 3
BOUND = CORPUS_BYTES // 2  # what a step may peak at: well below the corpus


@contextlib.contextmanager
def traced_peak():
    """{'peak': bytes}: the most memory Python and numpy held at once inside the block."""
    out = {}
    tracemalloc.start()
    try:
        yield out
    finally:
        out["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def make_store(root, n: int):
    """A store with an RGB corpus of ``n`` images (4 colour prototypes + noise, labelled) and a
    4-cluster run ``r`` of it."""
    rng = np.random.default_rng(0)
    protos = rng.integers(0, 256, (4, 1, 1, 3)) * np.ones((1, SIDE, SIDE, 1))
    y = rng.integers(0, 4, n)
    images = np.clip(protos[y] + rng.normal(0, 30, (n, SIDE, SIDE, 3)), 0, 255).astype(np.uint8)
    root.mkdir(parents=True)
    np.savez(root / "rgb.npz", images=images, labels=y)
    s = Store(root / "store")
    ingest_local(s, str(root / "rgb.npz"), "rgb")
    cr.run_local(s, "rgb", cr.ClusterParams(k=4, n_components=8, solver="randomized"), run_id="r")
    return s


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = make_store(tmp_path_factory.mktemp("budget") / "big", N)
    assert open_corpus(s, "rgb").images().nbytes == CORPUS_BYTES
    return s


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("budget") / "small", 256)


@pytest.fixture
def budget_1mb(monkeypatch):
    monkeypatch.setenv(ENV, "1")
    with zarr.config.set({"async.concurrency": 1}):
        yield


def test_the_budget_is_one_setting_with_a_clear_error(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert memory_budget_bytes() == 2048 * 2**20  # unset: today's 2 GiB
    monkeypatch.setenv(ENV, "1.5")
    assert memory_budget_bytes() == int(1.5 * 2**20)
    for bad in ("lots", "0", "-3", "nan"):
        monkeypatch.setenv(ENV, bad)
        with pytest.raises(ValueError, match=rf"\${ENV}={bad!r} is not a positive number of megabytes"):
            memory_budget_bytes()


def test_the_measure_sees_a_corpus_held_whole(store, monkeypatch):
    """The check can fail: under the default budget the corpus fits and is read into memory."""
    monkeypatch.delenv(ENV, raising=False)
    with zarr.config.set({"async.concurrency": 1}), traced_peak() as mem:
        data = CorpusImages(open_corpus(store, "rgb").images(), N)
    assert data._cache is not None and mem["peak"] >= CORPUS_BYTES


def test_pixel_features_come_in_blocks_that_fit_the_budget(budget_1mb):
    """What refine's round 0 without an autoencoder runs its pixel PCA on: blocks of at most the
    budget (as float32), with the values a whole read gives."""
    images = np.random.default_rng(1).integers(0, 256, (600, 28, 28, 1), dtype=np.uint8)
    data = CorpusImages(images, 600)
    feats = data.flat_features()
    assert max(feats.chunks[0]) * 784 * 4 <= 2**20 and feats.numblocks[0] > 1
    assert np.array_equal(feats.compute(), data.batch(np.arange(600)).reshape(600, -1).numpy())


def test_refine_train_and_evaluate_never_hold_the_corpus(store, small_store, budget_1mb):
    images = open_corpus(store, "rgb").images()
    with traced_peak() as mem:
        data = CorpusImages(images, N)
        batches = sum(len(x) for _, x in data.iter_batches(1024))
    assert data._cache is None and batches == N and mem["peak"] < BOUND

    # The first run of each step imports what it needs (torch's compiler stack, scikit-learn parts:
    # tens of MB that tracemalloc counts): run them once on a small corpus first, unmeasured.
    steps(small_store)
    peaks = steps(store)
    for step, peak in peaks.items():
        assert peak < BOUND, f"{step} peaked at {peak / 2**20:.1f} MB of a {CORPUS_BYTES / 2**20:.1f} MB corpus"


def steps(store: Store) -> dict:
    """Refine (a few contrastive steps, embed, re-cluster, train, embed; partitions and pictures),
    train one conditional GAN, evaluate it: the traced peak of each."""
    peaks = {}
    # pixel_dim=0: the pixel PCA joined to the embedding (randomized solver for RGB) peaked at 41 MB
    # on this 48 MB corpus, over the bound; it is not yet held to the budget (issue 16 note)
    cfg = RefineConfig(rounds=0, cl_epochs=0.05, cl_min_steps=0, pixel_dim=0, recluster="kmeans", warmup_steps=20,
                       steps=20, batch_size=32,
                       knn=5, width=4, depth=2, embed_dim=8, pca_dim=8, silhouette_sample=500, device="cpu")
    with traced_peak() as mem:
        refined = refine_local(store, "r", cfg, log=lambda s: None)
    assert refined["status"] == "complete"
    peaks["refine"] = mem["peak"]
    # the GAN's batches come from windows of rows that fit the budget
    params = TrainParams(mode="conditional", steps=5, batch_size=16, width=8, z_dim=8, checkpoint_every=100,
                         min_size=1, baseline=False, device="cpu")
    with traced_peak() as mem:
        assert tr.train_local(store, refined["run_id"], params)["models"]
    peaks["train"] = mem["peak"]
    # real images are read in batches; the reference CNNs train on a sample that fits the budget
    with traced_peak() as mem:
        report = ev.evaluate_local(store, refined["run_id"], EvalParams(samples=16, max_real=40, ref_steps=5,
                                                                        kid_subsets=2, device="cpu"))
    assert report["groups"]
    peaks["evaluate"] = mem["peak"]
    return peaks
