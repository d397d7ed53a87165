"""A store that moves, and lineage of its own for every run (issue 28, items 3 and 4).

A copied store must read its own files only: its records name files relative to the store, and
records written before that (absolute paths of the place they were written in) are read under the
copy. Two runs that made the same content keep a lineage record each, pointing at their own files.
One small store per module: digits at 28x28, the tiny trained run of tests/tiny_run.py (``km``,
refined ``ref`` with generators) and ``km2``, a clustering identical to ``km``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from faults import check, invoke, snapshot

from cci_core.store import relpaths

TINY_REFINE = ["--rounds", "1", "--steps", "10", "--warmup-steps", "10", "--batch-size", "64", "--start", "given",
               "--set", "width=8", "--set", "recluster=kmeans"]
TINY_TRAIN = ["--steps", "4", "--batch-size", "32", "--min-size", "10", "--checkpoint-every", "4", "--width", "8",
              "--z-dim", "16", "--no-baseline", "--device", "cpu"]


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    from tiny_run import train_tiny

    from cci_core.cluster import cluster_run as cr
    from cci_core.store.store import Store
    store = train_tiny(Store(tmp_path_factory.mktemp("moving") / "original"))
    cr.run_local(store, "d28", cr.ClusterParams(k=3, n_components=20), run_id="km2")  # the same content as km
    return store.root


def _copy(original: Path, name: str) -> Path:
    copy = original.parent / name
    shutil.copytree(original, copy)
    return copy


def _records_naming(root: Path, needle: str) -> list[str]:
    """Every JSON and Parquet record under ROOT whose text or values hold NEEDLE."""
    hits = []
    for p in sorted(root.rglob("*")):
        if p.suffix == ".json" and needle in p.read_text(errors="replace"):
            hits.append(str(p.relative_to(root)))
        elif p.suffix == ".parquet":
            table = pq.read_table(p)
            if needle in str(table.to_pydict()) or needle in str(table.schema.metadata):
                hits.append(str(p.relative_to(root)))
    return hits


def _lineage(root: Path):
    from cci_core.store.lineage import LineageStore
    return LineageStore(f"sqlite:///{root / 'lineage.db'}")


def test_two_runs_of_the_same_content_keep_their_own_lineage(original):
    lin = _lineage(original)
    for kind, name in [("clustering", "clustering"), ("embeddings", "embeddings"), ("pca", "pca"),
                       ("partition", "cluster-0")]:
        one, two = lin.resolve(f"{kind}:km/{name}"), lin.resolve(f"{kind}:km2/{name}")
        assert one.id != two.id and one.content_hash == two.content_hash, kind  # same content, own records
        assert Path(one.uri).is_relative_to(original / "runs" / "km"), one
        assert Path(two.uri).is_relative_to(original / "runs" / "km2"), two
    for run in ("km", "km2"):
        ran = invoke("lineage", "show", f"clustering:{run}/clustering", "--store", str(original), "--json")
        assert ran.exit_code == 0, ran.stderr
        shown = json.loads(ran.stdout)
        assert shown["name"] == f"{run}/clustering" and shown["uri"] == str(original / "runs" / run / "clustering")
    ran = invoke("lineage", "show", "corpus:d28@v1", "--downstream", "--store", str(original), "--json")
    assert ran.exit_code == 0, ran.stderr
    names, todo = set(), [json.loads(ran.stdout)]
    while todo:
        node = todo.pop()
        names.add(node["name"])
        todo += node["outputs"]
    assert {"km/clustering", "km2/clustering", "km/embeddings", "km2/embeddings"} <= names


def test_a_copy_never_reads_the_original_store(original):
    """The original still there: the copy's missing labels are an error naming the copy's file."""
    copy = _copy(original, "copy-new")
    assert _records_naming(copy, str(original)) == []  # nothing in the copy names the original
    labels = copy / "runs" / "km" / "clustering" / "labels.parquet"
    labels.unlink()
    before = snapshot(copy)
    ran = invoke("refine", "km", "--run-id", "km-r", *TINY_REFINE, "--store", str(copy))
    check("moved-store/copy-missing-labels-original-present", ran, before, copy,
          fragments=[str(labels), "missing", "cci cluster"])
    assert not (copy / "runs" / "km-r").exists()


def _as_written_before(copy: Path, original: Path) -> None:
    """Turn the copy's records into what the code wrote before paths were store-relative:
    absolute paths of ORIGINAL, and each run's ``store`` naming it."""
    for p in [*copy.glob("runs/*/run.json"), *copy.glob("runs/*/models/**/*.json")]:
        raw = json.loads(p.read_text())
        old = relpaths.from_record(original, raw)
        if p.name == "run.json":
            old["store"] = str(original)
        p.write_text(json.dumps(old, indent=2))


def test_records_with_absolute_paths_of_the_original_read_the_copy(original):
    from cci_core.generate.dataset_run import chosen_models
    from cci_core.store import runs
    from cci_core.store.store import Store
    copy = _copy(original, "copy-old")
    _as_written_before(copy, original)
    assert str(original) in (copy / "runs" / "ref" / "run.json").read_text()
    store = Store(copy)
    ref = runs.read_run(store, "ref")
    assert ref["store"] == str(copy) and ref["run_dir"] == str(copy / "runs" / "ref")
    assert ref["classifier"] == str(copy / "runs" / "ref" / "classifier")
    assert all(Path(p["path"]).is_relative_to(copy) for p in ref["partitions"])
    _, models = chosen_models(store, ref, None)
    assert models and all(Path(m["dir"]).is_relative_to(copy) for m in models)
    labels = copy / "runs" / "km" / "clustering" / "labels.parquet"
    labels.unlink()
    before = snapshot(copy)
    ran = invoke("refine", "km", "--run-id", "km-r", *TINY_REFINE, "--store", str(copy))
    check("moved-store/old-records-missing-labels-original-present", ran, before, copy,
          fragments=[str(labels), "missing"])


def test_a_moved_store_runs_every_command_alone(original, prefect_api, dask_scheduler):
    """The original renamed away (root reads anything, so a chmod would not stop it): predict,
    lineage, refine, train and generate work on the copy, and no record in it names the original."""
    copy = _copy(original, "copy-moved")
    away = original.parent / "original-away"
    original.rename(away)
    try:
        store = ["--store", str(copy)]

        def case(name: str, *args: str, correct, allow=()):
            before = snapshot(copy)
            ran = invoke(*args, *store)
            check(f"moved-store/{name}", ran, before, copy, correct=correct, allow=allow, expect="correct result")
            return ran

        def own(key: str):  # the JSON printed names a file of the copy
            return lambda ran: Path(json.loads(ran.stdout)[key]).is_relative_to(copy)
        case("predict", "predict", "ref", "--corpus", "d28", "--rows", "0:40", "--json",
             correct=lambda ran: len(json.loads(ran.stdout)) == 40)
        case("lineage-show", "lineage", "show", "clustering:ref/clustering", "--json", correct=own("uri"))
        case("refine", "refine", "km2", "--run-id", "km2-r", *TINY_REFINE, "--dask-address", dask_scheduler, "--json",
             correct=own("run_dir"), allow=["runs/km2/run.json"])  # the parent lists its new child
        case("train", "train", "km2-r", *TINY_TRAIN, "--dask-address", dask_scheduler, "--json",
             correct=lambda ran: all(Path(m["dir"]).is_relative_to(copy) for m in json.loads(ran.stdout)["models"]),
             allow=["runs/km2-r/run.json", "runs/km2-r/reports/explore.html"])  # the page adds the generators
        case("generate", "generate", "ref", "--dataset", "moved", "--per-cluster", "4", "--threshold", "0",
             "--dask-address", dask_scheduler, "--json", correct=own("path"))
        case("lineage-dataset", "lineage", "show", "dataset:moved@v1", "--json", correct=own("uri"))
        assert not original.exists()  # nothing was written to the old place either
        assert _records_naming(copy, str(original)) == []
        assert _records_naming(copy, str(away)) == []
    finally:
        away.rename(original)


def test_a_lineage_database_of_content_only_ids_keeps_one_record_per_artifact(tmp_path):
    """Records written when ids held the content alone: recording the same artifact again (a resumed
    run) returns that record; another run's copy of the content gets its own."""
    from cci_core.store.artifact_ids import artifact_id
    lin = _lineage(tmp_path)
    here, there = tmp_path / "runs" / "r1" / "clustering", tmp_path / "runs" / "r2" / "clustering"
    old = lin.record("clustering", "r1/clustering", str(here), "h", params={"k": 3},
                     aid=artifact_id("clustering", "h", {"k": 3}, []))  # as the previous code made it
    again = lin.record("clustering", "r1/clustering", str(here), "h", params={"k": 3})
    other = lin.record("clustering", "r2/clustering", str(there), "h", params={"k": 3})
    assert again.id == old.id and other.id != old.id and other.content_hash == old.content_hash
    assert [a.id for a in lin.list(kind="clustering", name="r1/clustering")] == [old.id]
    assert lin.resolve("clustering:r2/clustering").uri == str(there)
