"""The store, ingest and dataset writer on an object store (moto's S3 API on 127.0.0.1).

A corpus ingested into ``s3://…`` equals the same ingest into a folder; a dataset version on S3
is invisible until its commit marker; run-record updates from two processes under the S3 lock
lose nothing; a store URL without ``$CCI_LINEAGE_URL`` says what to set.
"""
from __future__ import annotations

import io
import json
import multiprocessing as mp
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from s3server import make_bucket, moto_server, s3_env

from cci_core.common.imagegrid import make_grid, save_png
from cci_core.ingest.ingest import acquire_lock, ingest_local
from cci_core.ingest.sources import SourceError
from cci_core.store import fs, runs
from cci_core.store.corpus import open_corpus
from cci_core.store.datasets import DatasetWriter, UnknownDatasetError, dataset_versions, open_dataset
from cci_core.store.lineage import LineageStore
from cci_core.store.store import Store, publish_dir, remove_stale_staging, staging


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with moto_server(tmp_path_factory.mktemp("moto")) as env, s3_env(env):
        yield env, make_bucket("store-test")


@pytest.fixture
def s3_store(s3, tmp_path, request, monkeypatch):
    """A store under its own prefix of the bucket, lineage in SQLite beside the test."""
    monkeypatch.setenv("CCI_LINEAGE_URL", f"sqlite:///{tmp_path / 'lineage.db'}")
    return Store(f"{s3[1]}/{request.node.name}")


def test_store_url_without_lineage_url_says_what_to_set(s3, monkeypatch):
    monkeypatch.delenv("CCI_LINEAGE_URL", raising=False)
    store = Store(f"{s3[1]}/no-lineage")
    assert str(store.root) == f"{s3[1]}/no-lineage" and not store.is_local
    with pytest.raises(ValueError, match=r"store s3://store-test/no-lineage .*set \$CCI_LINEAGE_URL"):
        _ = store.lineage_url
    with pytest.raises(ValueError, match="CCI_LINEAGE_URL"):
        runs.lineage_store(store)
    assert Store(f"{s3[1]}/x", lineage_url="sqlite:///l.db").lineage_url == "sqlite:///l.db"


def _without_times(manifest: dict) -> dict:
    """The manifest less what differs between two stores of the same content: times, ingest ids and
    lineage ids (a record's id includes where the artifact lies)."""
    return {**manifest, "created_at": None,
            "versions": [{**v, "created_at": None, "ingest_id": None, "artifact_id": None} for v in manifest["versions"]]}


def _comparable_index(c) -> pd.DataFrame:
    idx = c.index().drop(columns=["ingested_at"])
    return idx.assign(batch=idx["batch"].str.split("/").str[-1])  # "<ingest id>/<batch>"


def test_digits_ingest_into_s3_equals_the_local_ingest(s3_store, tmp_path):
    local = Store(tmp_path / "local", lineage_url=f"sqlite:///{tmp_path / 'local-lineage.db'}")
    opts = dict(size=(28, 28), channels=1, batch_size=500)
    got_s3 = ingest_local(s3_store, "builtin:digits", "digits", **opts)
    got_local = ingest_local(local, "builtin:digits", "digits", **opts)
    assert got_s3["added"] == got_local["added"] == 1797 and got_s3["store"] == str(s3_store.root)
    # same content, params and inputs: the same content hash; the ids differ, as a record's identity
    # includes where the artifact lies (issue 28: every copy of the content has a record of its own)
    s3_art = LineageStore(s3_store.lineage_url).get(got_s3["artifact_id"])
    local_art = LineageStore(local.lineage_url).get(got_local["artifact_id"])
    assert s3_art.content_hash == local_art.content_hash and s3_art.params == local_art.params

    remote, here = open_corpus(s3_store, "digits"), open_corpus(local, "digits")
    assert str(remote.images_path).startswith("s3://")
    assert np.array_equal(remote.read_images(), here.read_images())
    assert np.array_equal(remote.read_images(np.array([5, 1796, 0])), here.read_images(np.array([5, 1796, 0])))
    pd.testing.assert_frame_equal(_comparable_index(remote), _comparable_index(here))
    assert _without_times(remote.manifest) == _without_times(here.manifest)
    assert not (s3_store.corpus_dir("digits") / "_staging").exists()
    assert not (s3_store.corpus_dir("digits") / ".ingest.lock").exists()
    assert s3_store.corpora() == ["digits"]

    art = s3_art
    assert art.uri == art.stored_uri == str(s3_store.corpus_dir("digits"))  # a URL: every worker resolves it

    again = ingest_local(s3_store, "builtin:digits", "digits", **opts)  # every image is already there
    assert (again["added"], again["duplicates"], again["changed"]) == (0, 1797, False)
    assert open_corpus(s3_store, "digits").version == 1


def test_second_ingest_of_an_s3_corpus_is_refused_while_the_first_holds_its_lock(s3_store):
    cdir = s3_store.corpus_dir("busy")
    acquire_lock(cdir, "first")
    assert json.loads((cdir / ".ingest.lock").read_text())["ingest_id"] == "first"
    with pytest.raises(ValueError, match=r"corpus 'busy' is being written by another ingest \(first"):
        ingest_local(s3_store, "builtin:digits", "busy", size=(28, 28), channels=1)


def test_dataset_on_s3_is_invisible_before_its_commit_and_readable_after(s3_store):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (70, 8, 8, 1), dtype=np.uint8)
    manifest = pd.DataFrame({"image_id": [f"id{i}" for i in range(70)], "cluster": np.arange(70) % 3})
    seen_at_record = {}

    def record(final, version):  # the lineage step: nothing of this version may be visible yet
        seen_at_record.update(final=str(final), exists=final.exists(),
                              versions=dataset_versions("gen", s3_store))
        return "lineage-id"

    with DatasetWriter(s3_store, "gen", (8, 8, 1), chunk_rows=32) as w:
        w.append(images[:40], manifest[:40])
        w.append(images[40:], manifest[40:])
        assert str(w.staging).startswith(f"{s3_store.root}/datasets/gen/.staging-")
        assert dataset_versions("gen", s3_store) == []
        with pytest.raises(UnknownDatasetError):
            open_dataset("gen", store=s3_store)
        v1 = w.commit({"description": "test"}, record=record)
    assert seen_at_record == {"final": f"{s3_store.root}/datasets/gen/v1", "exists": False, "versions": []}
    ds = open_dataset("gen", store=s3_store)
    assert (ds.version, v1.version, len(ds)) == (1, 1, 70)
    assert np.array_equal(ds.images[:], images)
    assert ds.manifest["image_id"].tolist() == manifest["image_id"].tolist()
    assert ds.card["lineage"]["artifact_id"] == "lineage-id"
    assert len(fs.read_parquet(ds.path / "data.parquet")) == 70
    assert not any(p.name.startswith(".staging-") for p in s3_store.dataset_dir("gen").iterdir())

    # a version copied without its marker (a writer killed mid-move) does not exist for readers
    fs.copytree(ds.path / "images.zarr", s3_store.dataset_dir("gen") / "v2" / "images.zarr")
    assert dataset_versions("gen", s3_store) == [1] and open_dataset("gen", store=s3_store).version == 1
    with pytest.raises(UnknownDatasetError, match="no commit marker"):
        open_dataset("gen", 2, store=s3_store)
    with DatasetWriter(s3_store, "gen", (8, 8, 1)) as w:  # the next commit takes v2's place
        w.append(images[:5], manifest[:5])
        assert w.commit({}).version == 2
    assert len(open_dataset("gen", "latest", store=s3_store)) == 5


def _update_many(url: str, env: dict, lineage: str, who: str, n: int) -> None:
    os.environ.update(env)
    store = Store(url, lineage_url=lineage)
    for i in range(n):
        runs.update_run(store, "r1", **{f"{who}{i}": i})


def test_run_record_updates_from_two_processes_under_the_s3_lock_lose_nothing(s3_store, s3):
    runs.write_run(s3_store, "r1", {"run_id": "r1", "status": "running"})
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_update_many, args=(str(s3_store.root), s3[0], s3_store.lineage_url, who, 6))
             for who in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0, 0]
    record = runs.read_run(s3_store, "r1")
    assert {k: v for k, v in record.items() if k[0] in "ab"} == {f"{w}{i}": i for w in "ab" for i in range(6)}
    assert not (s3_store.run_dir("r1") / ".run.lock").exists()
    runs.finish_run(s3_store, "r1")
    assert runs.list_runs(s3_store) == ["r1"]


def test_staging_folders_on_s3_publish_json_last_and_stale_ones_go(s3_store):
    parent = s3_store.root / "palettes"
    with staging(parent) as tmp:
        (tmp / "swatch.png").write_bytes(b"png")
        (tmp / "palette.json").write_text("{}")
        publish_dir(tmp, parent / "p1")
    assert sorted(p.name for p in (parent / "p1").iterdir()) == ["palette.json", "swatch.png"]
    dead = parent / ".staging-dead"
    (dead / ".owner.json").write_text(json.dumps({"host": os.uname().nodename, "pid": 2 ** 22 + 9, "started": 1.0}))
    (dead / "half.npy").write_bytes(b"x")
    assert remove_stale_staging(parent) == [dead] and not dead.exists()


def test_pictures_are_written_to_a_store_url(s3_store):
    grid = make_grid(np.arange(4 * 5 * 5, dtype=np.uint8).reshape(4, 5, 5))
    for where in (f"{s3_store.root}/pictures/g.png", s3_store.root / "pictures" / "h.png"):
        out = save_png(grid, where, scale=2)
        assert not fs.is_local(out)
        with out.open("rb") as fh:
            assert Image.open(io.BytesIO(fh.read())).size == (grid.shape[1] * 2, grid.shape[0] * 2)


def test_an_array_source_at_a_url_ingests_like_the_same_local_file(s3_store, tmp_path):
    rng = np.random.default_rng(7)
    images, labels = rng.integers(0, 256, (50, 8, 8), dtype=np.uint8), rng.integers(0, 3, 50)
    np.savez(tmp_path / "arr.npz", images=images, labels=labels)
    fs.copyfile(tmp_path / "arr.npz", s3_store.root / "in" / "arr.npz")
    np.save(tmp_path / "x.npy", images)
    fs.copyfile(tmp_path / "x.npy", s3_store.root / "in" / "x.npy")
    local = Store(tmp_path / "local", lineage_url=f"sqlite:///{tmp_path / 'local-lineage.db'}")
    ingest_local(s3_store, f"{s3_store.root}/in/arr.npz", "arr", batch_size=16)
    ingest_local(local, str(tmp_path / "arr.npz"), "arr", batch_size=16)
    remote, here = open_corpus(s3_store, "arr"), open_corpus(local, "arr")
    assert np.array_equal(remote.read_images(), here.read_images())
    assert remote.labels().tolist() == here.labels().tolist() == [str(v) for v in labels]
    assert remote.index()["source"].iloc[3] == f"{s3_store.root}/in/arr.npz#3"
    got = ingest_local(s3_store, f"{s3_store.root}/in/x.npy", "arr", batch_size=16)
    assert (got["added"], got["duplicates"]) == (0, 50)
    with pytest.raises(SourceError, match="does not exist"):
        ingest_local(s3_store, f"{s3_store.root}/in/none.npy", "arr")
    with pytest.raises(SourceError, match="only .npy/.npz arrays"):
        ingest_local(s3_store, f"{s3_store.root}/in/", "arr")
