"""The store on object storage, with Dask workers that share no disk (issue 18, items 1 and 2).

A real S3 API (moto) on 127.0.0.1, a Dask scheduler and two workers started as separate processes,
each worker in its own empty folder (its cwd, its TMPDIR and its --local-directory), all stopped by
the test. The real `cci` runs ingest, cluster, refine (short), train (short) and generate against
``s3://<bucket>/store`` on that cluster; the same commands with the same seed run on a local store
at the same time (on a scheduler and worker of its own, lineage in the store: a user on one machine).
Then: the cluster labels, the refined labels and the generated dataset (images and manifest) are
equal, both workers ran tasks, and the workers' folders hold caches only, no store file.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from distributed import Client, get_task_stream
from distributed.utils import key_split
from s3server import make_bucket, moto_server, s3_env

BIN = Path(sys.executable).parent
BUCKET = "cci-e2e"
CORPUS, RUN, REFINED, DATASET = "d28", "km", "ref", "gen"
# the smallest settings that exist (tests/tiny_run.py): digits at 28x28, k=3, one short refine
# round, ten GAN steps per cluster, twelve images per cluster
COMMANDS = (
    ["ingest", "builtin:digits", "--corpus", CORPUS, "--size", "28x28", "--batch-size", "512"],
    ["cluster", CORPUS, "--k", "3", "--components", "20", "--seed", "0", "--run-id", RUN],
    ["refine", RUN, "--rounds", "1", "--steps", "20", "--batch-size", "64", "--seed", "0", "--device", "cpu",
     "--set", "warmup_steps=20", "--set", "width=8", "--set", "start=given", "--set", "recluster=kmeans",
     "--run-id", REFINED],
    ["train", REFINED, "--steps", "10", "--batch-size", "32", "--min-size", "10", "--checkpoint-every", "10",
     "--width", "8", "--z-dim", "16", "--no-baseline", "--device", "cpu"],
    ["generate", REFINED, "--dataset", DATASET, "--per-cluster", "12", "--threshold", "0.4", "--seed", "3"],
)
# what a worker's own folder may hold: Dask's scratch space and the temporary files (caches)
WORKER_CACHES = {"dask-scratch", "tmp"}
STORE_SUFFIXES = {".zarr", ".parquet", ".safetensors", ".npy", ".npz", ".db", ".png"}


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _user_env(**extra) -> dict:
    """A user without a GPU (CUDA is not bitwise repeatable), with the session's Prefect API."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "CCI_LINEAGE_URL"}
    return {**env, "CUDA_VISIBLE_DEVICES": "", "COLUMNS": "200", **extra}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server with one bucket; yields its environment (credentials + AWS_ENDPOINT_URL)."""
    with moto_server(tmp_path_factory.mktemp("moto")) as env, s3_env(env):
        make_bucket(BUCKET)
        yield env


@pytest.fixture(scope="module")
def remote_env(s3, tmp_path_factory, prefect_api):
    """What the S3 commands and the workers are given. The lineage database is a service, not part
    of the store (SQLite cannot live in S3): here a SQLite file in the test's folder, which the
    workers reach because they run on this machine; across machines it would be PostgreSQL."""
    db = tmp_path_factory.mktemp("lineage") / "lineage.db"
    return _user_env(**s3, CCI_LINEAGE_URL=f"sqlite:///{db}", PREFECT_API_URL=prefect_api)


@contextlib.contextmanager
def dask_cluster(root: Path, env: dict, workers: tuple[str, ...]):
    """A scheduler and WORKERS as separate processes on 127.0.0.1, each worker in its own empty folder
    under ROOT (its cwd, TMPDIR and --local-directory); yields (address, {worker address: its folder})."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    (root / "scheduler").mkdir(parents=True)
    logs = open(root / "dask.log", "wb")  # noqa: SIM115 - closed below
    procs = [subprocess.Popen([BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", "127.0.0.1:0"], cwd=root / "scheduler", env=env,
                              stdout=logs, stderr=subprocess.STDOUT)]
    folders = {}
    for name in workers:
        folder = root / name
        (folder / "tmp").mkdir(parents=True)
        folders[name] = folder
        procs.append(subprocess.Popen(
            [BIN / "dask", "worker", address, "--name", name, "--nthreads", "1", "--host", "127.0.0.1",
             "--no-nanny", "--dashboard-address", "127.0.0.1:0", "--local-directory", str(folder / "dask-scratch")],
            cwd=folder, env={**env, "TMPDIR": str(folder / "tmp")}, stdout=logs, stderr=subprocess.STDOUT))
    try:
        with Client(address, set_as_default=False, timeout=60) as client:
            client.wait_for_workers(len(workers), timeout=90)
            info = client.scheduler_info(n_workers=-1)["workers"]
        yield address, {addr: folders[w["name"]] for addr, w in info.items()}
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        logs.close()


@pytest.fixture(scope="module")
def cluster(remote_env, tmp_path_factory):
    """The cluster of the S3 commands: two workers."""
    with dask_cluster(tmp_path_factory.mktemp("dask"), remote_env, ("w1", "w2")) as found:
        yield found


@pytest.fixture(scope="module")
def local_cluster(prefect_api, tmp_path_factory):
    """The cluster of the local-store commands: one worker, started once (a LocalCluster per command
    would start and import everything five times), with no S3 or lineage variables: the local store
    keeps its lineage in its own lineage.db, as a user's on one machine does."""
    with dask_cluster(tmp_path_factory.mktemp("dask-local"), _user_env(PREFECT_API_URL=prefect_api), ("w",)) as found:
        yield found


def _run_all(store: str, flags: list[str], env: dict, cwd: Path, results: dict, key: str) -> None:
    """The five commands in order; stops at the first failure (its stderr kept)."""
    done = []
    for args in COMMANDS:
        t0 = time.monotonic()
        res = subprocess.run([BIN / "cci", *args, "--store", store, *flags], capture_output=True, text=True,
                             timeout=600, env=env, cwd=cwd)
        done.append((args[0], round(time.monotonic() - t0, 1)))
        if res.returncode != 0:
            results[key] = {"failed": args[0], "stderr": res.stderr[-4000:], "times": done}
            return
    results[key] = {"times": done}


@pytest.fixture(scope="module")
def both_stores(cluster, local_cluster, remote_env, tmp_path_factory):
    """The commands on s3://BUCKET/store (on the two workers) and on a local store, at once;
    yields the two store roots and what the scheduler ran meanwhile ({key prefix: {worker}})."""
    address, _ = cluster
    root = tmp_path_factory.mktemp("stores")
    (root / "client-s3").mkdir()
    (root / "client-local").mkdir()
    url, local = f"s3://{BUCKET}/store", root / "local-store"
    results: dict = {}
    with Client(address, set_as_default=False, timeout=30) as client, get_task_stream(client=client) as stream:
        threads = [
            threading.Thread(target=_run_all, args=(url, ["--dask-address", address], remote_env,
                                                    root / "client-s3", results, "s3")),
            threading.Thread(target=_run_all, args=(str(local), ["--dask-address", local_cluster[0]], _user_env(),
                                                    root / "client-local", results, "local")),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for key in ("s3", "local"):
        assert "failed" not in results[key], (f"cci {results[key]['failed']} on the {key} store failed "
                                              f"after {results[key]['times']}:\n{results[key]['stderr']}")
    placed: dict[str, set[str]] = {}
    for rec in stream.data:
        placed.setdefault(key_split(rec["key"]), set()).add(rec["worker"])
    print("command seconds:", results)
    yield {"url": url, "local": local, "placed": placed, "client_dirs": [root / "client-s3", root / "client-local"]}


def _read_labels(store_root, run_id: str) -> pd.DataFrame:
    from cci_core.store import fs
    return fs.read_parquet(fs.as_path(store_root) / "runs" / run_id / "clustering" / "labels.parquet")


def test_cluster_and_refined_labels_equal_the_local_stores(both_stores, s3):
    with s3_env(s3):
        for run_id in (RUN, REFINED):
            remote, local = _read_labels(both_stores["url"], run_id), _read_labels(both_stores["local"], run_id)
            assert len(local) == 1797 and local["cluster"].nunique() == 3
            pd.testing.assert_frame_equal(remote, local)


def test_generated_dataset_equals_the_local_stores(both_stores, s3):
    from cci_core.store.datasets import open_dataset
    from cci_core.store.store import Store
    with s3_env(s3):
        remote = open_dataset(DATASET, store=Store(both_stores["url"]))
        local = open_dataset(DATASET, store=Store(str(both_stores["local"])))
        ia, ib = remote.images[:], local.images[:]
        assert ia.shape == (36, 28, 28, 1) and ia.std() > 0
        assert np.array_equal(ia, ib)
        # the same rows; lineage ids differ between the two stores (a record's id includes where it lies)
        ids = [c for c in local.manifest.columns if c.endswith("artifact_id")]
        pd.testing.assert_frame_equal(remote.manifest.drop(columns=ids), local.manifest.drop(columns=ids))
        assert remote.version == local.version == 1


def test_both_workers_ran_tasks(both_stores, cluster):
    _, folders = cluster
    placed, workers = both_stores["placed"], set(folders)
    ran = set().union(*placed.values()) if placed else set()
    assert ran == workers, f"tasks ran on {ran}, not on both workers {workers}: {placed}"
    # each command's work reached the workers (Prefect task runs are keyed by their function)
    for prefix in ("decode_batch_task", "fit_embeddings_task", "refine_task", "train_cluster_task", "generate_task"):
        assert placed.get(prefix, set()) and placed[prefix] <= workers, f"{prefix}: {sorted(placed)}"


def test_workers_folders_hold_caches_only(both_stores, cluster, local_cluster):
    folders = {**cluster[1], **local_cluster[1]}
    for folder in [*folders.values(), *both_stores["client_dirs"]]:
        entries = {p.name for p in folder.iterdir()}
        allowed = WORKER_CACHES if folder in folders.values() else set()
        assert entries <= allowed, f"{folder} holds {sorted(entries - allowed)} besides its caches"
        stray = [p for p in folder.rglob("*") if p.suffix in STORE_SUFFIXES
                 or p.name in ("run.json", "corpus.json", "card.json", "_COMMITTED")]
        assert not stray, f"store files in {folder}: {stray[:10]}"


# ----- what the CLI says before anything starts, for a store on object storage

def _cci(*args, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "cci", *map(str, args)], capture_output=True, text=True, timeout=120, env=env,
                          cwd=cwd)


def test_a_url_store_without_a_lineage_database_is_one_error_line(s3, tmp_path):
    res = _cci("cluster", CORPUS, "--store", f"s3://{BUCKET}/store", env=_user_env(**s3), cwd=tmp_path)
    assert res.returncode == 1 and res.stderr.count("error:") == 1, res.stderr
    assert f"s3://{BUCKET}/store" in res.stderr and "$CCI_LINEAGE_URL" in res.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("case", ["missing bucket", "no endpoint"])
def test_a_bucket_that_cannot_be_reached_is_one_error_line(case, s3, tmp_path):
    env = _user_env(**s3, CCI_LINEAGE_URL=f"sqlite:///{tmp_path / 'lineage.db'}")
    url = f"s3://{BUCKET}/store"
    if case == "missing bucket":
        url = "s3://no-such-bucket/store"
    else:
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    t0 = time.monotonic()
    res = _cci("ingest", "builtin:digits", "--corpus", CORPUS, "--store", url, env=env, cwd=tmp_path)
    assert res.returncode == 1 and res.stderr.count("error:") == 1, res.stderr
    assert url in res.stderr
    if case == "missing bucket":
        assert "bucket 'no-such-bucket' does not exist" in res.stderr and "create it" in res.stderr
    else:
        assert "cannot reach the object store at " + env["AWS_ENDPOINT_URL"] in res.stderr
    assert time.monotonic() - t0 < 60 and not any(tmp_path.iterdir())


def test_a_url_store_has_no_warm_server(s3, tmp_path):
    env = _user_env(**s3, CCI_LINEAGE_URL=f"sqlite:///{tmp_path / 'lineage.db'}")
    res = _cci("server", "start", "--store", f"s3://{BUCKET}/store", env=env, cwd=tmp_path)
    assert res.returncode == 1 and "warm server" in res.stderr and "--dask-address" in res.stderr, res.stderr


# ----- the stages above generate, on the same two stores

def test_palette_features_and_refresh_on_the_url_store(both_stores, cluster, remote_env, s3, tmp_path, monkeypatch):
    """A palette and a feature comparison run as flows on the two workers against the S3 store, and a
    refresh (new rows assigned with the classifier, a changed cluster retrained) runs on it; each
    equals the same step on the local store."""
    from sklearn.datasets import load_digits

    from cci_core.features.feature_spaces import compare_local
    from cci_core.features.records import FeatureParams
    from cci_core.ingest.ingest import ingest_local
    from cci_core.palette.palette import Palette
    from cci_core.palette.palette_run import learn_palette_step
    from cci_core.refresh import refresh_run
    from cci_core.store import fs
    from cci_core.store.store import Store
    from flows.features import features_flow
    from flows.palette import palette_flow
    from flows.runtime import dask_task_runner
    from flows.settings import FeaturesSettings, PaletteSettings
    address, _ = cluster
    url, local_root = both_stores["url"], both_stores["local"]
    local = Store(local_root, lineage_url=f"sqlite:///{local_root / 'lineage.db'}")
    params = FeatureParams(spaces=["pixels", "classifier"], fractions=[1.0], max_train=300, max_test=100,
                           forest_trees=5, device="cpu")
    monkeypatch.setenv("CCI_LINEAGE_URL", remote_env["CCI_LINEAGE_URL"])
    with s3_env(s3):
        pal = palette_flow.with_options(task_runner=dask_task_runner(address))(
            PaletteSettings(f"{RUN}:1", 3, store_root=url))
        assert pal["palette_dir"].startswith(url) and fs.as_path(pal["swatch"]).exists()
        here_pal = learn_palette_step(local, f"{RUN}:1", 3)
        # the same palette; the ids differ, as a record's id (and its inputs' ids) include where it lies
        assert Palette.load(pal["palette_dir"]).content_hash() == Palette.load(here_pal["palette_dir"]).content_hash()

        feats = features_flow.with_options(task_runner=dask_task_runner(address))(
            FeaturesSettings(REFINED, store_root=url, params=params))
        assert feats["report"].startswith(url) and fs.as_path(feats["chart"]).exists()
        here = compare_local(local, REFINED, params)
        drop = ("seconds",)
        assert [{k: v for k, v in r.items() if k not in drop} for r in feats["table"]] == \
            [{k: v for k, v in r.items() if k not in drop} for r in here["table"]]

        mirrored = load_digits().images[:150, :, ::-1]  # 150 images the corpus does not hold yet
        np.save(tmp_path / "new.npy", (mirrored * 15).clip(0, 255).astype(np.uint8))
        drifts, labels = [], []
        for store in (Store(url), local):
            ingest_local(store, str(tmp_path / "new.npy"), CORPUS, size=(28, 28))
            drift = refresh_run.assign_new(store, REFINED, None, retrain_threshold=0.01)
            retrained = refresh_run.retrain_changed(store, drift["run_id"], drift["changed_clusters"][:1])
            drifts.append({**drift, "retrained": retrained["retrained"]})
            labels.append(_read_labels(store.root, drift["run_id"]))
        assert drifts[0] == drifts[1] and drifts[0]["n_new"] == 150 and drifts[0]["retrained"]
        pd.testing.assert_frame_equal(labels[0], labels[1])
