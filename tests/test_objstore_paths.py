"""cluster, refine and generate on a store URL (moto's S3 API on 127.0.0.1, started by the test).

The same seeded tiny run (tests/tiny_run.py: ingest, k-means, a short refine, tiny per-cluster GANs)
is made in ``s3://…`` and in a folder. What each package wrote on S3 is read back with the package's
own readers (labels, partitions, PCA, reference sample, classifier, generators, checkpoints,
evaluation features) and equals the local run; a refinement and a generator resume from their
checkpoints on S3; and no store path ever lands in the working folder (``Path("s3://b/k")`` would
make ``./s3:/b/k``).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from s3server import make_bucket, moto_server, s3_env
from tiny_run import train_tiny

from cci_core.cluster import cluster_run as cr
from cci_core.cluster.clustering_model import load_reference
from cci_core.cluster.labels import read_labels
from cci_core.cluster.pca import PCA
from cci_core.generate.model_dir import checkpoint_dirs, last_sample
from cci_core.generate.sampling import generate, load_generator
from cci_core.refine.classifier import last_done_round, load_classifier
from cci_core.store import fs, runs
from cci_core.store.corpus import open_corpus
from cci_core.store.relpaths import read_record
from cci_core.store.store import Store


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """(local store, S3 store, working folder): the tiny run in both, made from an empty working folder."""
    tmp = tmp_path_factory.mktemp("objstore-paths")
    cwd, here = tmp / "cwd", os.getcwd()
    cwd.mkdir()
    (tmp / "local").mkdir()
    old = os.environ.get("CCI_LINEAGE_URL")
    with moto_server(tmp) as env, s3_env(env):
        os.environ["CCI_LINEAGE_URL"] = f"sqlite:///{tmp / 'lineage.db'}"
        os.chdir(cwd)
        try:
            remote = train_tiny(Store(f"{make_bucket('cci-paths')}/store"))
            local = train_tiny(Store(tmp / "local", lineage_url=f"sqlite:///{tmp / 'local' / 'lineage.db'}"))
            yield local, remote, cwd
        finally:
            os.chdir(here)
            if old is None:
                os.environ.pop("CCI_LINEAGE_URL", None)
            else:
                os.environ["CCI_LINEAGE_URL"] = old


def _run_dir(store: Store, run_id: str):
    return fs.as_path(runs.read_run(store, run_id)["run_dir"])


def test_cluster_run_on_s3_reads_back_like_the_local_run(stores):
    local, remote, cwd = stores
    run = runs.read_run(remote, "km")
    assert not remote.is_local and run["run_dir"].startswith("s3://cci-paths/store/runs/km")
    assert run["partitions"][0]["path"].startswith("s3://")
    assert np.array_equal(read_labels(run["run_dir"]), read_labels(runs.read_run(local, "km")["run_dir"]))
    for c in range(3):
        assert np.array_equal(cr.partition_rows(remote, "km", c), cr.partition_rows(local, "km", c))
    rdir, ldir = _run_dir(remote, "km"), _run_dir(local, "km")
    assert np.array_equal(PCA.load(rdir / "pca").components_, PCA.load(ldir / "pca").components_)
    r_ref, l_ref = load_reference(rdir / "clustering"), load_reference(ldir / "clustering")
    assert all(np.array_equal(r_ref[k], l_ref[k]) for k in ("embeddings", "labels", "rows"))
    assert np.array_equal(cr.embeddings(run).compute(), cr.embeddings(runs.read_run(local, "km")).compute())
    for name in ("clusters.png", "cluster-0.png", "scatter-pca.png"):
        assert (rdir / "pictures" / name).read_bytes() == (ldir / "pictures" / name).read_bytes(), name
    assert list(cwd.iterdir()) == []


def test_refined_run_on_s3_keeps_its_classifier_and_resumes(stores):
    from cci_core.refine.records import RefinePlan
    from cci_core.refine.refine import refine
    local, remote, cwd = stores
    run = runs.read_run(remote, "ref")
    assert run["classifier"].startswith("s3://")
    labels = read_labels(run["run_dir"])
    assert np.array_equal(labels, read_labels(runs.read_run(local, "ref")["run_dir"]))
    r_sd = load_classifier(run["classifier"], "cpu").state_dict()
    l_sd = load_classifier(runs.read_run(local, "ref")["classifier"], "cpu").state_dict()
    assert r_sd.keys() == l_sd.keys() and all(torch.equal(r_sd[k], l_sd[k]) for k in r_sd)
    rdir = _run_dir(remote, "ref")
    assert last_done_round(rdir / "refine") == 1
    assert (rdir / "pictures" / "curves.png").read_bytes() == (_run_dir(local, "ref") / "pictures" / "curves.png").read_bytes()
    # every round is done: a second call resumes from S3 and trains nothing
    c = open_corpus(remote, run["corpus"], run["corpus_version"])
    logs: list[str] = []
    again = refine(c.images(), c.n_rows, read_labels(runs.read_run(remote, "km")["run_dir"]),
                   RefinePlan.of(run).config, out_dir=rdir / "refine", log=logs.append)
    assert any(line.startswith("resuming after round 1 from s3://") for line in logs)
    assert np.array_equal(again.labels, labels)
    assert list(cwd.iterdir()) == []


def test_generators_on_s3_load_back_and_draw_the_local_images(stores):
    local, remote, cwd = stores
    report = read_record(remote.root, _run_dir(remote, "ref") / "models" / "training.json")  # store-relative on disk
    local_dirs = {m["name"]: m["dir"]
                  for m in read_record(local.root, _run_dir(local, "ref") / "models" / "training.json")["models"]}
    assert sorted(local_dirs) == sorted(m["name"] for m in report["models"]) and report["models"]
    for m in report["models"]:
        assert m["dir"].startswith("s3://") and fs.as_path(m["generator"]).exists()
        assert checkpoint_dirs(m["dir"]) and last_sample(m["dir"]).startswith("s3://")
        assert (fs.as_path(m["dir"]) / "loss.png").exists() and (fs.as_path(m["dir"]) / "model.json").exists()
        drawn = generate(load_generator(m["dir"], "cpu"), 8, seed=1)
        assert np.array_equal(drawn, generate(load_generator(local_dirs[m["name"]], "cpu"), 8, seed=1)), m["name"]
    assert list(cwd.iterdir()) == []


def test_generator_checkpoints_rotate_and_resume_on_s3(stores, tmp_path):
    """Old checkpoints are deleted on S3 (keep 2), and 4 steps + a resume to 6 equal 6 steps at once."""
    from cci_core.generate.gan import GANConfig
    from cci_core.generate.training_loop import TrainConfig, train_generator
    local, remote, cwd = stores
    c = open_corpus(remote, "d28")
    cfg = GANConfig(image_size=28, channels=1, z_dim=16, g_width=8, d_width=8)
    tcfg = dict(batch_size=16, checkpoint_every=1, keep_checkpoints=2, n_samples=4, device="cpu")
    out = remote.root / "scratch" / "gan"
    train_generator(c.images(), out, cfg, TrainConfig(steps=4, **tcfg), n_rows=c.n_rows)
    assert [p.name for p in checkpoint_dirs(out)] == ["step-0000003", "step-0000004"]
    res = train_generator(c.images(), str(out), cfg, TrainConfig(steps=6, **tcfg), n_rows=c.n_rows)
    assert res["resumed_from"] == 4 and [p.name for p in checkpoint_dirs(out)] == ["step-0000005", "step-0000006"]
    straight = train_generator(open_corpus(local, "d28").images(), tmp_path / "gan", cfg, TrainConfig(steps=6, **tcfg),
                               n_rows=c.n_rows)
    a, b = fs.load_tensors(res["generator"]), fs.load_tensors(straight["generator"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert list(cwd.iterdir()) == []


def test_evaluation_and_dataset_of_an_s3_run_equal_the_local_ones(stores):
    from cci_core.generate.dataset_run import generate_dataset
    from cci_core.generate.evaluation_run import evaluate_local
    from cci_core.generate.settings import EvalParams
    from cci_core.store.datasets import open_dataset
    local, remote, cwd = stores
    params = EvalParams(samples=12, max_real=60, ref_steps=30, kid_subsets=3, device="cpu")
    rep, ref = evaluate_local(remote, "ref", params), evaluate_local(local, "ref", params)
    assert rep["report"].startswith("s3://") and rep["headline"] == ref["headline"]
    eval_dir = _run_dir(remote, "ref") / "reports" / "eval"
    assert fs.load_npz(eval_dir / "real-masks.npz")["overall"].any()
    assert fs.load_npy(eval_dir / "real-classifier.npy").shape[0] == fs.load_npy(eval_dir / "real-rows.npy").shape[0]
    kw = dict(per_cluster=6, threshold=0.4, seed=3, log=lambda _: None)
    out, loc = generate_dataset(remote, "ref", "gen", **kw), generate_dataset(local, "ref", "gen", **kw)
    assert out["path"].startswith("s3://") and out["acceptance_by_cluster"] == loc["acceptance_by_cluster"]
    r_ds, l_ds = open_dataset("gen", store=remote), open_dataset("gen", store=local)
    assert np.array_equal(r_ds.images[:], l_ds.images[:])
    assert list(cwd.iterdir()) == []
