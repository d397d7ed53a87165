"""Publish last, in the library (no subprocess): a dataset version, a palette, a segmentation and a
run become visible only after their lineage record is written; a failure publishes nothing; a
re-run of a run id starts clean or resumes exactly; staging folders of dead writers are removed
by the next writer and those of live writers are left alone."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from cci_core.cluster import cluster_run as cr
from cci_core.palette import palette_run as pr
from cci_core.palette import sources as ps
from cci_core.store import runs
from cci_core.store.datasets import DatasetWriter, dataset_versions, list_datasets, open_dataset
from cci_core.store.lineage import LineageStore
from cci_core.store.store import (
    OWNER_FILE,
    Store,
    atomic_write_json,
    make_staging,
    process_identity,
    remove_stale_staging,
    writer_alive,
)


def dead_writer() -> dict:
    """The identity of a process that has exited (as a killed writer leaves it)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    me = process_identity()
    return {**me, "pid": int(proc.stdout), "started": time.time() - 5}


def _images(n: int, value: int) -> tuple[np.ndarray, pd.DataFrame]:
    imgs = np.full((n, 8, 8, 1), value, np.uint8)
    return imgs, pd.DataFrame({"image_id": [f"id{value}-{i}" for i in range(n)]})


@pytest.fixture(scope="module")
def store(digits28_store):
    """digits at 28x28 with one finished k=3 run (``km``) and a palette learned on it."""
    s = digits28_store("publish-last", km=cr.ClusterParams(k=3, n_components=10))
    s.palette = pr.learn_palette_step(s, "d28", 4, montage=0)["palette_id"]
    return s


def test_dataset_lineage_is_written_before_the_version_is_visible(tmp_path):
    store = Store(tmp_path)
    lin = LineageStore(store.lineage_url)
    seen = {}

    def record(path, number):
        # called with the final URI while nothing of the version is visible yet
        seen.update(path=path, number=number, exists=path.exists(), versions=dataset_versions("gen", store))
        return lin.record("dataset", f"gen@v{number}", str(path), f"hash{number}").id

    with DatasetWriter(store, "gen", (8, 8, 1)) as w:
        w.append(*_images(4, 1))
        v1 = w.commit({"description": "first"}, record=record)
    assert seen == {"path": v1.path, "number": 1, "exists": False, "versions": []}
    art = lin.get(v1.card["lineage"]["artifact_id"])
    assert art.uri == str(v1.path) and art.name == "gen@v1"
    assert not (v1.path / OWNER_FILE).exists()

    def broken(path, number):
        raise RuntimeError("lineage database unreachable")
    with pytest.raises(RuntimeError, match="unreachable"):
        with DatasetWriter(store, "gen", (8, 8, 1)) as w:
            w.append(*_images(3, 2))
            w.commit({}, record=broken)
    assert dataset_versions("gen", store) == [1] and open_dataset("gen", store=store).version == 1
    assert not (store.dataset_dir("gen") / "v2").exists()
    assert not list(store.dataset_dir("gen").glob(".staging-*"))
    assert int(open_dataset("gen", store=store).images[:].max()) == 1  # the good version is intact


def test_stale_staging_of_dead_writers_is_removed_live_ones_kept(tmp_path):
    store = Store(tmp_path)
    ddir = store.dataset_dir("gen")
    dead = make_staging(ddir)
    atomic_write_json(dead / OWNER_FILE, dead_writer())
    live = make_staging(ddir)  # this process: alive
    unowned = ddir / ".staging-unowned"
    unowned.mkdir()
    old = time.time() - 3600
    os.utime(unowned, (old, old))
    fresh = ddir / ".staging-fresh"  # no owner file yet, just made: its writer may be starting
    fresh.mkdir()
    assert writer_alive(process_identity()) and not writer_alive(dead_writer())
    assert not writer_alive({**process_identity(), "started": time.time() - 10**6})  # a reused pid
    with DatasetWriter(store, "gen", (8, 8, 1)) as w:
        assert not dead.exists() and not unowned.exists()
        assert live.exists() and fresh.exists() and w.staging.exists()
        w.append(*_images(2, 3))
        w.commit({})
    assert sorted(p.name for p in ddir.glob(".staging-*")) == sorted([live.name, fresh.name])
    assert remove_stale_staging(ddir) == []


def test_stylize_refuses_a_palette_outside_the_store_before_any_work(store, tmp_path):
    outside = tmp_path / "elsewhere" / "pal"
    outside.mkdir(parents=True)
    (outside / "palette.json").write_text((pr.palette_path(store, store.palette) / "palette.json").read_text())
    rel = os.path.relpath(outside, pr.palettes_dir(store))
    for bad in (rel, str(outside), "../x", "a/b"):
        with pytest.raises(ValueError, match="is not a palette id"):
            pr.check_stylize(store, "d28", bad, "sty")
        with pytest.raises(ValueError, match="is not a palette id"):
            pr.stylize_step(store, "d28", bad, "sty")
    # a palette folder in the store that the lineage store does not know: refused, not published
    import shutil
    shutil.copytree(pr.palette_path(store, store.palette), pr.palettes_dir(store) / "palette-unrecorded")
    with pytest.raises(LookupError, match="has no lineage record"):
        pr.stylize_step(store, "d28", "palette-unrecorded", "sty")
    assert "sty" not in list_datasets(store) and not (store.dataset_dir("sty") / "v1").exists()


def test_stylized_version_carries_its_recorded_lineage_and_a_failure_publishes_nothing(store, monkeypatch):
    out = pr.stylize_step(store, "km:1", store.palette, "sty-ok", montage=4)
    ds = open_dataset("sty-ok", store=store)
    lin = LineageStore(store.lineage_url)
    art = lin.get(ds.card["lineage"]["artifact_id"])
    assert art.id == out["artifact_id"] and art.uri == str(ds.path) and art.name == "sty-ok@v1"
    assert (ds.path / "before-after.png").exists() and (ds.path / "lineage.json").exists()
    again = pr.stylize_step(store, "km:1", store.palette, "sty-ok", montage=0)  # the same images again
    assert again["version"] == 2 and again["artifact_id"] != out["artifact_id"]  # a record of its own
    assert lin.get(again["artifact_id"]).uri == again["path"]

    def fail(*args, **kwargs):
        raise RuntimeError("killed while recording")
    monkeypatch.setattr(LineageStore, "record", fail)
    with pytest.raises(RuntimeError, match="killed while recording"):
        pr.stylize_step(store, "km:2", store.palette, "sty-ok")
    assert dataset_versions("sty-ok", store) == [1, 2]
    assert not list(store.dataset_dir("sty-ok").glob(".staging-*"))


def test_palette_and_segmentation_appear_only_with_their_lineage(store, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("killed while recording")
    with DatasetWriter(store, "tiny", (28, 28, 1)) as w:  # a small source: segmentation is per image
        w.append(np.random.default_rng(0).integers(0, 255, (3, 28, 28, 1), dtype=np.uint8),
                 pd.DataFrame({"image_id": ["a", "b", "c"]}))
        w.commit({})
    before_pal, before_seg = pr.known_palettes(store), sorted((store.root / "segments").glob("*"))
    monkeypatch.setattr(LineageStore, "record", fail)
    with pytest.raises(RuntimeError):
        pr.learn_palette_step(store, "km:0", 3, montage=0)
    with pytest.raises(RuntimeError):
        pr.segment_corpus_step(store, "dataset:tiny", k=2)
    monkeypatch.undo()
    assert pr.known_palettes(store) == before_pal
    assert sorted(p for p in (store.root / "segments").glob("*") if not p.name.startswith(".")) == \
        [p for p in before_seg if not p.name.startswith(".")]
    # a failed writer removes its staging folder itself (a killed one leaves it to the next writer)
    assert not list(pr.palettes_dir(store).glob(".staging-*")) and not list((store.root / "segments").glob(".staging-*"))
    stale = pr.palettes_dir(store) / ".staging-killed"
    stale.mkdir()
    atomic_write_json(stale / OWNER_FILE, dead_writer())
    pal = pr.learn_palette_step(store, "km:0", 3, montage=0)
    assert not stale.exists() and pal["palette_id"] in pr.known_palettes(store)
    assert LineageStore(store.lineage_url).get(pal["palette_id"]).uri == pal["palette_dir"]


def test_a_killed_run_is_never_listed_and_a_rerun_starts_clean(store):
    # a k=6 run killed after its partitions: run.json "running", its writer gone
    plan = cr.start_run(store, "d28", cr.ClusterParams(k=6, n_components=10), run_id="r")
    emb = cr.fit_embeddings(store, plan)
    cl = cr.cluster_step(store, plan, emb, 6)
    cr.write_partitions(store, plan, cl, [(emb["pca_artifact_id"], "pca")])
    runs.update_run(store, "r", writer=dead_writer())
    assert "r" not in runs.list_runs(store) and "km" in runs.list_runs(store)
    with pytest.raises(ValueError, match="no finished clustering"):
        runs.finished_run(store, "r")
    with pytest.raises(ValueError, match="no finished clustering"):
        ps.resolve_source(store, "r:5")
    # a live writer of the same id is refused, before any work
    runs.update_run(store, "r", writer={**process_identity(os.getppid())})
    with pytest.raises(ValueError, match="is being written by process"):
        cr.check_request(store, "d28", cr.ClusterParams(k=3, n_components=10), run_id="r")
    runs.update_run(store, "r", writer=dead_writer())
    # the re-run with k=3 starts from a clean folder: no partition of the killed k=6 run survives
    run = cr.run_local(store, "d28", cr.ClusterParams(k=3, n_components=10), run_id="r")
    parts = sorted(p.name for p in (store.run_dir("r") / "partitions").iterdir())
    assert parts == ["cluster-000.parquet", "cluster-001.parquet", "cluster-002.parquet"]
    assert np.array_equal(cr.run_labels(run), cr.run_labels(runs.finished_run(store, "km")))
    with pytest.raises(ValueError, match="already exists and is complete"):
        cr.check_request(store, "d28", cr.ClusterParams(k=6, n_components=10), run_id="r")
    lin = LineageStore(store.lineage_url)
    assert all(lin.get(p["artifact_id"]).uri == p["path"] for p in run["partitions"])


def test_derived_run_resumes_with_the_same_params_else_starts_clean(store):
    parent = runs.finished_run(store, "km")
    plan = runs.start_derived_run(store, parent, "km-derived", "refined", {"a": 1})
    keep = store.run_dir("km-derived") / "refine" / "round-00.json"
    keep.parent.mkdir()
    keep.write_text("{}")
    runs.update_run(store, "km-derived", writer=dead_writer())
    again = runs.start_derived_run(store, parent, "km-derived", "refined", {"a": 1})
    assert keep.exists() and again["created_at"] == plan["created_at"]  # resumed
    runs.update_run(store, "km-derived", writer=dead_writer())
    runs.start_derived_run(store, parent, "km-derived", "refined", {"a": 2})
    assert not keep.exists()  # other options: the killed run's files are gone


def test_an_abort_cut_short_leaves_a_folder_that_names_its_writer(tmp_path, monkeypatch):
    """A writer killed while it removes its staging folder (an interrupt unwinding into abort())
    leaves the owner file, removed last: the next writer sees a dead writer's folder and removes it
    at once, instead of an ownerless one kept for the grace period."""
    from cci_core.store import fs
    store = Store(tmp_path)
    writer = DatasetWriter(store, "gen", (8, 8, 1))
    writer.append(*_images(2, 3))
    real_rmtree = fs.rmtree

    def killed(path, *args, **kwargs):
        if fs.as_path(path).name == "images.zarr":
            raise KeyboardInterrupt  # the kill lands while the images are being removed
        return real_rmtree(path, *args, **kwargs)
    monkeypatch.setattr(fs, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        writer.abort()
    monkeypatch.setattr(fs, "rmtree", real_rmtree)
    assert (writer.staging / OWNER_FILE).exists() and (writer.staging / "images.zarr").exists()
    atomic_write_json(writer.staging / OWNER_FILE, dead_writer())  # the writer is gone now
    assert remove_stale_staging(store.dataset_dir("gen")) == [writer.staging] and not writer.staging.exists()
