"""Fault injection on the pixels and numbers of a store (issue 28, item 1): flipped bytes in a Zarr
chunk of a corpus, of a run's embeddings and of a dataset version.

New arrays carry a crc32c per chunk, so a read of a damaged chunk is one error naming the array
and the chunk (in the library and through `cci cluster`), and `cci store verify` lists every
damaged chunk with what depends on it; an array written before checksums is checked with
``--deep`` (each row's ``image_id`` against its pixels). Each case works on its own copy of the
session's published store (corpus ``d28``, runs ``km`` and ``ref``, dataset ``gen@v1``).
"""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from faults import check, flip_bytes, invoke, run, snapshot

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CORPUS_CHUNK = "corpora/d28/images.zarr/c/0/0/0/0"
EMBEDDINGS_CHUNK = "runs/km/embeddings.zarr/c/0/0"
DATASET_CHUNK = "datasets/gen/v1/images.zarr/c/0/0/0/0"


@pytest.fixture
def copy_store(published_store, tmp_path):
    """A fresh copy of the session's published store for one case to damage."""
    from cci_core.store.store import Store

    def make() -> Store:
        root = tmp_path / f"store-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(published_store.root, root, ignore=shutil.ignore_patterns(".*"))
        return Store(root)
    return make


def _chunk_name(chunk: str) -> str:
    """``corpora/d28/images.zarr/c/0/0/0/0`` as the error names it: ``corpora/d28/images.zarr chunk c/0/0/0/0``."""
    array, _, key = chunk.partition(".zarr/")
    return f"{array}.zarr chunk {key}"


def test_verify_passes_an_undamaged_store(copy_store):
    store = copy_store()
    before = snapshot(store.root)
    ran = invoke("store", "verify", "--deep", "--store", store.root)
    check("checksums: verify --deep of an undamaged store", ran, before, store.root, expect="correct result",
          correct=lambda r: "store OK: 3 arrays" in r.stdout and not r.errors)


def test_verify_names_each_flipped_chunk_and_its_dependents(copy_store):
    store = copy_store()
    for chunk in (CORPUS_CHUNK, EMBEDDINGS_CHUNK, DATASET_CHUNK):
        flip_bytes(store.root / chunk)
    before = snapshot(store.root)
    ran = invoke("store", "verify", "--store", store.root)
    check("checksums: verify after flipped bytes in a corpus, an embeddings and a dataset chunk", ran, before,
          store.root, fragments=[_chunk_name(c) for c in (CORPUS_CHUNK, EMBEDDINGS_CHUNK, DATASET_CHUNK)])
    report = json.loads(invoke("store", "verify", "--json", "--store", store.root).stdout)
    found = {f"{d['path']} {d['where']}": d for d in report["damaged"]}
    assert set(found) == {_chunk_name(c) for c in (CORPUS_CHUNK, EMBEDDINGS_CHUNK, DATASET_CHUNK)}, found
    assert all(d["what"] == "checksum mismatch" for d in found.values())
    corpus, embeddings, dataset = (found[_chunk_name(c)] for c in (CORPUS_CHUNK, EMBEDDINGS_CHUNK, DATASET_CHUNK))
    assert [o.split()[:2] for o in corpus["owners"]] == [["corpus", "d28@v1"]]
    # everything built on the corpus depends on it, down to the published dataset
    for made in ("pca km/pca", "embeddings km/embeddings", "clustering km/clustering", "classifier ref/classifier",
                 "model ref/models/cluster-0", "dataset gen@v1"):
        assert any(d.startswith(made + " (") for d in corpus["dependents"]), (made, corpus["dependents"])
    assert [o.split()[:2] for o in embeddings["owners"]] == [["embeddings", "km/embeddings"]]
    assert any(d.startswith("clustering km/clustering (") for d in embeddings["dependents"])
    assert not any(d.startswith("pca ") for d in embeddings["dependents"])  # upstream is not a dependent
    assert [o.split()[:2] for o in dataset["owners"]] == [["dataset", "gen@v1"]] and dataset["dependents"] == []


def test_verify_names_damaged_tables_records_weights_and_missing_artifacts(copy_store):
    store = copy_store()
    labels = store.root / "runs/km/clustering/labels.parquet"
    labels.write_bytes(labels.read_bytes()[: labels.stat().st_size // 2])
    (store.root / "runs/km/reports/metrics.json").write_text('{"acc": 0.9,')
    flip_bytes(store.root / "runs/ref/models/cluster-0/generator.safetensors", offset=0, count=8)  # the header's length
    (store.root / "runs/km/partitions/cluster-001.parquet").unlink()
    before = snapshot(store.root)
    ran = invoke("store", "verify", "--store", store.root)
    check("checksums: verify of a truncated Parquet, bad JSON, damaged weights and a missing artifact", ran, before,
          store.root, fragments=["runs/km/clustering/labels.parquet: Parquet file unreadable", "runs/km/reports/metrics.json",
                                 "runs/ref/models/cluster-0/generator.safetensors"])
    assert "runs/km/partitions/cluster-001.parquet (lineage artifact partition-" in ran.stdout
    assert "recorded partition km/cluster-1 is missing" in ran.stdout
    # the labels belong to the clustering: the refined run and the dataset depend on them
    block = ran.stdout.split("damaged: runs/km/clustering/labels.parquet")[1].split("damaged:")[0]
    assert "belongs to: clustering km/clustering" in block and "dataset gen@v1" in block


def test_verify_reports_a_damaged_lineage_database(copy_store):
    import sqlite3
    store = copy_store()
    with contextlib.closing(sqlite3.connect(store.root / "lineage.db")) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the file itself, none in lineage.db-wal
    flip_bytes(store.root / "lineage.db", offset=3 * 4096, count=8)  # the header of the artifacts table's first page
    before = snapshot(store.root)
    ran = invoke("store", "verify", "--store", store.root)
    check("checksums: verify of a store whose lineage database has a damaged page", ran, before, store.root,
          fragments=["lineage.db: lineage database damaged", "malformed"])
    assert "damaged: corpora" not in ran.stdout  # the arrays were still checked, and are fine


def test_a_damaged_chunk_is_one_named_error_when_read(copy_store):
    from cci_core.cluster import cluster_run
    from cci_core.store.corpus import open_corpus
    from cci_core.store.datasets import open_dataset
    from cci_core.store.integrity import ChunkDamagedError
    from cci_core.store.store import read_json
    store = copy_store()
    km = {**read_json(store.run_dir("km") / "run.json"), "run_dir": str(store.run_dir("km"))}  # this copy's run
    for chunk in (CORPUS_CHUNK, EMBEDDINGS_CHUNK, DATASET_CHUNK):
        flip_bytes(store.root / chunk)
    reads = {CORPUS_CHUNK: lambda: open_corpus(store, "d28").read_images(np.arange(5)),
             EMBEDDINGS_CHUNK: lambda: cluster_run.embeddings(km).compute(),
             DATASET_CHUNK: lambda: open_dataset("gen", store=store).images[:3]}
    for chunk, read in reads.items():
        with pytest.raises(ChunkDamagedError) as raised:
            read()
        array, _, key = chunk.partition(".zarr/")
        assert (raised.value.array, raised.value.chunks) == (array + ".zarr", (key,))
        assert f"{array}.zarr: chunk {key} is damaged (checksum mismatch)" in str(raised.value)
        assert "restore" in str(raised.value) and "cci store verify" in str(raised.value)


def test_cci_cluster_on_a_damaged_corpus_is_one_error_line(copy_store, prefect_api):
    store = copy_store()
    flip_bytes(store.root / CORPUS_CHUNK)
    before = snapshot(store.root)
    # the console script, as a user runs it: what the Dask worker processes print is seen too
    ran = run("cluster", "d28", "-k", "3", "--components", "10", "--store", store.root, "--run-id", "after-damage",
              env={"PREFECT_API_URL": prefect_api})
    check("checksums: cci cluster on a corpus with a flipped chunk", ran, before, store.root,
          fragments=["corpora/d28/images.zarr", "chunk c/0/0/0/0", "cci ingest"])
    assert not (store.root / "runs" / "after-damage" / "embeddings.zarr").exists()  # nothing made from damaged pixels


def test_commands_reading_pixels_in_process_give_one_error_line(copy_store, tmp_path):
    store = copy_store()
    for chunk in (CORPUS_CHUNK, DATASET_CHUNK):
        flip_bytes(store.root / chunk)
    before = snapshot(store.root)
    ran = invoke("predict", "km", "--corpus", "d28", "--store", store.root)
    check("checksums: cci predict --corpus on a corpus with a flipped chunk", ran, before, store.root,
          fragments=[f"{_chunk_name(CORPUS_CHUNK).replace(' chunk', ': chunk')} is damaged"])
    ran = invoke("datasets", "export", "gen", tmp_path / "png", "--store", store.root)
    check("checksums: cci datasets export of a dataset with a flipped chunk", ran, before, store.root,
          fragments=[f"{_chunk_name(DATASET_CHUNK).replace(' chunk', ': chunk')} is damaged", "generate the dataset again"])


def test_a_deleted_corpus_chunk_is_named_not_read_as_zeros(copy_store):
    store = copy_store()
    (store.root / CORPUS_CHUNK).unlink()
    before = snapshot(store.root)
    ran = invoke("predict", "km", "--corpus", "d28", "--store", store.root)
    check("checksums: cci predict --corpus on a corpus with a deleted chunk file", ran, before, store.root,
          fragments=[f"{_chunk_name(CORPUS_CHUNK).replace(' chunk', ': chunk')} is damaged", "chunk file missing"])
    ran = invoke("store", "verify", "--store", store.root)
    check("checksums: verify of a corpus with a deleted chunk file", ran, before, store.root,
          fragments=[_chunk_name(CORPUS_CHUNK) + ": chunk file missing"])


def _drop_checksums(images: Path) -> None:
    """Rewrite a corpus's images.zarr as corpora were written before chunk checksums (same pixels)."""
    import zarr
    from zarr.codecs import BloscCodec
    old = zarr.open_array(str(images), mode="r")
    pixels, chunks = old[:], old.chunks
    shutil.rmtree(images)
    arr = zarr.create_array(str(images), shape=pixels.shape, chunks=chunks, dtype="uint8", fill_value=0,
                            compressors=BloscCodec(cname="zstd", clevel=1, shuffle="noshuffle"),
                            dimension_names=["n", "y", "x", "c"])
    arr[:] = pixels


def test_verify_deep_finds_changed_pixels_in_an_array_without_checksums(copy_store):
    store = copy_store()
    _drop_checksums(store.root / "corpora/d28/images.zarr")
    # bytes deep in the zstd stream: the chunk still decodes, to different pixels (no checksum to tell)
    flip_bytes(store.root / CORPUS_CHUNK, offset=200_000)
    from cci_core.store.corpus import open_corpus
    assert open_corpus(store, "d28").read_images().shape == (1797, 28, 28, 1)  # old stores keep reading
    shallow = invoke("store", "verify", "--store", store.root)
    assert shallow.exit_code == 0 and "no chunk checksums" in shallow.stderr and "corpora/d28/images.zarr" in shallow.stderr
    before = snapshot(store.root)
    ran = invoke("store", "verify", "--deep", "--store", store.root)
    check("checksums: verify --deep of changed pixels in a corpus without checksums", ran, before, store.root,
          fragments=[_chunk_name(CORPUS_CHUNK) + " rows", "pixels differ from their image_id"])
    assert "dataset gen@v1" in ran.stdout  # what depends on the corpus


def test_verify_a_store_on_s3(tmp_path, monkeypatch):
    """The same checks through fsspec: a flipped byte in a corpus chunk on S3 (moto) is named with its owner."""
    import fsspec
    from s3server import make_bucket, moto_server, s3_env

    from cci_core.ingest.ingest import ingest_local
    from cci_core.store.store import Store
    with moto_server(tmp_path) as env, s3_env(env):
        monkeypatch.setenv("CCI_LINEAGE_URL", f"sqlite:///{tmp_path / 'lineage.db'}")
        store = Store(f"{make_bucket('checksums')}/st")
        ingest_local(store, "builtin:digits", "d28", size=(28, 28))
        ok = invoke("store", "verify", "--deep", "--store", store.root)
        assert ok.exit_code == 0 and "store OK: 1 arrays" in ok.stdout, ok.stderr
        s3 = fsspec.filesystem("s3")
        key = str(store.root / CORPUS_CHUNK).removeprefix("s3://")
        data = bytearray(s3.cat(key))
        data[len(data) // 2] ^= 0xFF
        s3.pipe(key, bytes(data))
        ran = invoke("store", "verify", "--store", store.root)
    assert ran.exit_code == 1 and ran.errors and _chunk_name(CORPUS_CHUNK) + ": checksum mismatch" in ran.errors[0], ran.stderr
    assert "belongs to: corpus d28@v1" in ran.stdout
