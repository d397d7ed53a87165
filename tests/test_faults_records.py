"""Fault injection on the records of a store (issue 28, items 2 and 3): a ``run.json``,
``corpus.json``, ``card.json``, ``latest.json``, model config, Parquet table or safetensors
file that is unreadable or of the wrong shape is refused with one line naming the file (and the
field), never removed or overwritten; dataset names resolve only inside the store.

One tiny trained store (tests/tiny_run.py, with a published dataset ``gen``) serves the module:
each case damages one file, runs the real ``cci`` in process, and puts the file back.
"""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest
from faults import check, flip_bytes, invoke, snapshot

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Corpus ``d28``, clustering ``km``, its refined run ``ref`` with generators, dataset ``gen@v1``."""
    from tiny_run import train_tiny

    from cci_core.generate import dataset_run
    from cci_core.store.store import Store
    s = train_tiny(Store(tmp_path_factory.mktemp("faults-records")))
    dataset_run.generate_dataset(s, "ref", "gen", per_cluster=4, threshold=0.4, seed=3, log=lambda _: None)
    return s


@contextlib.contextmanager
def damaged(path: Path, change):
    """CHANGE(path) damages the file for the block; its bytes are put back afterwards."""
    path = Path(path)
    kept = path.read_bytes()
    try:
        change(path)
        yield path
    finally:
        path.write_bytes(kept)


def edit_json(**fields):
    """A damage: set FIELDS of a JSON object file (a value of the wrong type, say)."""
    def change(path: Path) -> None:
        path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))
    return change


def cut_json(path: Path) -> None:
    """A damage: a JSON record cut short (as a copy or sync interrupted midway leaves it)."""
    path.write_text(path.read_text()[: len(path.read_text()) // 2])


def cut_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def run_case(case_id, store, args, fragments, **kw):
    before = snapshot(store.root)
    ran = invoke(*args, "--store", str(store.root))
    check(case_id, ran, before, store.root, fragments=fragments, **kw)
    return ran


def test_unreadable_finished_run_is_never_replaced(store):
    """The data loss of the issue: an unreadable run.json was taken for an unfinished run and its folder rmtree'd."""
    with damaged(store.root / "runs" / "km" / "run.json", cut_json):
        run_case("records: run.json not JSON, cluster --run-id of that run", store,
                 ["cluster", "d28", "--k", "3", "--run-id", "km"], ["runs/km/run.json", "not valid JSON"])
    assert (store.root / "runs" / "km" / "partitions").is_dir()


def test_run_folder_without_record_is_never_replaced(store):
    """A folder of files without run.json is not proven to be an unfinished write: it stays."""
    lost = store.root / "runs" / "lost"
    shutil.copytree(store.root / "runs" / "km" / "partitions", lost / "partitions")
    try:
        run_case("records: run folder without run.json, cluster --run-id of it", store,
                 ["cluster", "d28", "--k", "3", "--run-id", "lost"], ["runs/lost", "no run.json"])
    finally:
        shutil.rmtree(lost)


def test_unfinished_run_of_a_dead_writer_is_still_cleared(store):
    """The one folder that may go: a readable run.json with status running whose writer is gone."""
    from cci_core.store import runs
    rdir = store.root / "runs" / "crashed"
    rdir.mkdir()
    (rdir / "junk.txt").write_text("half a run")
    (rdir / "run.json").write_text(json.dumps({"run_id": "crashed", "status": "running",
                                               "writer": {"host": "elsewhere", "pid": 1, "started": 0.0}}))
    assert runs.claim_run_dir(store, "crashed") == {} and list(rdir.iterdir()) == []
    rdir.rmdir()


def test_unfinished_run_naming_no_writer_is_never_replaced(store):
    """status running but no writer recorded: nothing proves its writer is gone, so it stays."""
    rdir = store.root / "runs" / "nowriter"
    shutil.copytree(store.root / "runs" / "km" / "partitions", rdir / "partitions")
    (rdir / "run.json").write_text(json.dumps({"run_id": "nowriter", "status": "running"}))
    try:
        run_case("records: unfinished run.json naming no writer, cluster --run-id of it", store,
                 ["cluster", "d28", "--k", "3", "--run-id", "nowriter"], ["runs/nowriter/run.json", "names no writer"])
    finally:
        shutil.rmtree(rdir)


def test_wrong_types_in_run_json(store):
    runs_dir = store.root / "runs"
    with damaged(runs_dir / "ref" / "run.json", edit_json(corpus_version="abc")):
        run_case("records: run.json corpus_version not an integer, predict", store,
                 ["predict", "ref", "--corpus", "d28", "--rows", "0:8"],
                 ["runs/ref/run.json", "'corpus_version'", "'abc'", "an integer"])
    with damaged(runs_dir / "km" / "run.json", edit_json(n_rows="1797")):
        run_case("records: run.json n_rows a string, refine", store,
                 ["refine", "km", "--run-id", "km-r2"], ["runs/km/run.json", "'n_rows'"])
    with damaged(runs_dir / "km" / "run.json", edit_json(clustering=["k", 3])):
        run_case("records: run.json clustering a list, train", store, ["train", "km"],
                 ["runs/km/run.json", "'clustering'"])
    with damaged(runs_dir / "km" / "run.json", edit_json(children=[{"run_id": 7}])):
        run_case("records: run.json children of the wrong shape, cluster --run-id of it", store,
                 ["cluster", "d28", "--k", "3", "--run-id", "km"], ["runs/km/run.json", "children[0]"])
    assert not (runs_dir / "km-r2").exists()


def test_invalid_corpus_json(store):
    path = store.root / "corpora" / "d28" / "corpus.json"
    with damaged(path, cut_json):
        run_case("records: corpus.json not JSON, corpus info", store, ["corpus", "info", "d28"],
                 ["corpora/d28/corpus.json", "not valid JSON"])
    manifest = json.loads(path.read_text())
    versions = [{**manifest["versions"][0], "n_rows": "many"}]
    with damaged(path, edit_json(versions=versions)):
        run_case("records: corpus.json n_rows not an integer, cluster", store, ["cluster", "d28", "--k", "3"],
                 ["corpora/d28/corpus.json", "versions[0].n_rows"])


def test_truncated_index_parquet(store):
    with damaged(store.root / "corpora" / "d28" / "index.parquet", cut_half):
        run_case("records: index.parquet cut short, corpus info", store, ["corpus", "info", "d28"],
                 ["corpora/d28/index.parquet"])


def test_truncated_run_tables(store):
    """A run's labels and partitions cut short: read inside the flows' tasks (refine, train, generate),
    checked here through their one reader each; the error names the file."""
    from cci_core.cluster.cluster_run import partition_rows
    from cci_core.cluster.labels import read_labels
    rdir = store.root / "runs" / "km"
    with damaged(rdir / "clustering" / "labels.parquet", cut_half), \
            pytest.raises(ValueError, match="^runs/km/clustering/labels.parquet cannot be read as Parquet"):
        read_labels(rdir)
    with damaged(rdir / "partitions" / "cluster-000.parquet", cut_half), \
            pytest.raises(ValueError, match="^runs/km/partitions/cluster-000.parquet cannot be read as Parquet"):
        partition_rows(store, "km", 0)


def test_damaged_dataset_records(store):
    ddir = store.root / "datasets" / "gen"
    with damaged(ddir / "v1" / "card.json", cut_json):
        run_case("records: card.json not JSON, datasets show", store, ["datasets", "show", "gen"],
                 ["datasets/gen/v1/card.json", "not valid JSON"])
    with damaged(ddir / "v1" / "card.json", edit_json(shape="28x28")):
        run_case("records: card.json shape a string, datasets show", store, ["datasets", "show", "gen"],
                 ["datasets/gen/v1/card.json", "'shape'"])
    with damaged(ddir / "latest.json", edit_json(version="one")):
        run_case("records: latest.json version a string, datasets show", store, ["datasets", "show", "gen"],
                 ["datasets/gen/latest.json", "'version'"])
    with damaged(ddir / "latest.json", edit_json(version=2)):
        # v2 committed and lost (the marker is written before latest.json): not a silent fall-back to v1
        run_case("records: latest.json names a version without its marker, datasets show", store,
                 ["datasets", "show", "gen"], ["datasets/gen/latest.json", "datasets/gen/v2"])
    with damaged(ddir / "v1" / "manifest.parquet", cut_half):
        run_case("records: manifest.parquet cut short, datasets show", store, ["datasets", "show", "gen"],
                 ["datasets/gen/v1/manifest.parquet"])


def test_dataset_commit_never_replaces_what_it_cannot_read(store):
    """DatasetWriter removed a v<N> folder without marker before writing v<N>: only a crash between
    the move and the marker may leave one; latest.json naming it proves it was committed."""
    import numpy as np
    import pandas as pd

    from cci_core.store.datasets import DatasetWriter
    ddir = store.root / "datasets" / "gen"
    shutil.copytree(ddir / "v1", ddir / "v2")
    (ddir / "v2" / "_COMMITTED").unlink()
    try:
        with damaged(ddir / "latest.json", edit_json(version=2)):
            before = snapshot(ddir)
            with pytest.raises(ValueError, match="datasets/gen/v2 has no commit marker"), \
                    DatasetWriter(store, "gen", (28, 28, 1)) as w:
                w.append(np.zeros((2, 28, 28, 1), np.uint8), pd.DataFrame({"cluster": [0, 1]}))
                w.commit({"description": "x"})
            assert snapshot(ddir) == before
    finally:
        shutil.rmtree(ddir / "v2")
    with damaged(ddir / "latest.json", cut_json):  # a latest.json that cannot be read is not replaced by a commit
        before = snapshot(ddir)
        with pytest.raises(ValueError, match="datasets/gen/latest.json is not valid JSON"):
            DatasetWriter(store, "gen", (28, 28, 1))
        assert snapshot(ddir) == before


def test_damaged_weights(store):
    cdir = store.root / "runs" / "ref" / "classifier"
    with damaged(cdir / "classifier.safetensors", lambda p: flip_bytes(p, offset=8)):
        run_case("records: classifier.safetensors header damaged, predict", store,
                 ["predict", "ref", "--corpus", "d28", "--rows", "0:8"], ["runs/ref/classifier/classifier.safetensors"])
    with damaged(cdir / "classifier.json", edit_json(cnn="wide")):
        run_case("records: classifier.json cnn not an object, predict", store,
                 ["predict", "ref", "--corpus", "d28", "--rows", "0:8"], ["runs/ref/classifier/classifier.json", "'cnn'"])


def test_dataset_names_resolve_only_in_the_store(store, tmp_path, monkeypatch):
    """A dataset folder outside the store, given as a path or found in the working directory, is not read."""
    elsewhere = tmp_path / "other"
    shutil.copytree(store.root / "datasets" / "gen", elsewhere)
    run_case("names: datasets show of a folder outside the store", store, ["datasets", "show", str(elsewhere)],
             [repr(str(elsewhere)), "is a path"])
    run_case("names: datasets show ../x", store, ["datasets", "show", "../gen"], ["'../gen'"])
    monkeypatch.chdir(tmp_path)
    shutil.copytree(store.root / "datasets" / "gen", tmp_path / "g")
    run_case("names: datasets show of a dataset folder in the working directory", store, ["datasets", "show", "g"],
             ["no dataset 'g'"])


def test_lost_corpus_record_is_never_written_over(store):
    """A corpus folder with rows but no corpus.json was taken for a new corpus: an ingest wrote its rows again."""
    cdir = store.root / "corpora" / "d28"
    kept = (cdir / "corpus.json").read_bytes()
    (cdir / "corpus.json").unlink()
    try:
        run_case("records: corpus.json deleted, ingest into that corpus", store,
                 ["ingest", "builtin:digits", "--corpus", "d28", "--size", "28x28"], ["corpora/d28", "no corpus.json"])
        run_case("records: corpus.json deleted, corpus info", store, ["corpus", "info", "d28"],
                 ["corpora/d28", "no corpus.json"])
        run_case("records: corpus.json deleted, corpus list", store, ["corpus", "list"], [],
                 expect="correct result", correct=lambda r: "d28" in r.stdout and "damaged" in r.stdout)
    finally:
        (cdir / "corpus.json").write_bytes(kept)


def test_damaged_model_files(store):
    rdir = store.root / "runs"
    with damaged(rdir / "ref" / "classifier" / "classifier.json", edit_json(
            cnn={**json.loads((rdir / "ref" / "classifier" / "classifier.json").read_text())["cnn"], "width": "8"})):
        run_case("records: classifier.json cnn.width a string, predict", store,
                 ["predict", "ref", "--corpus", "d28", "--rows", "0:8"], ["classifier/classifier.json", "'cnn.width'"])
    with damaged(rdir / "km" / "pca" / "pca.json", cut_json):
        run_case("records: pca.json not JSON, predict", store, ["predict", "km", "--corpus", "d28", "--rows", "0:8"],
                 ["runs/km/pca/pca.json", "not valid JSON"])
    with damaged(rdir / "km" / "pca" / "pca.safetensors", cut_half):
        run_case("records: pca.safetensors cut short, predict", store,
                 ["predict", "km", "--corpus", "d28", "--rows", "0:8"], ["runs/km/pca/pca.safetensors"])


def test_damaged_training_record(store):
    """models/training.json (the run's trained generators) is read by `cci generate` before its flow starts."""
    path = store.root / "runs" / "ref" / "models" / "training.json"
    models = json.loads(path.read_text())["models"]
    with damaged(path, cut_json):
        run_case("records: training.json not JSON, generate", store, ["generate", "ref", "--dataset", "g2"],
                 ["runs/ref/models/training.json", "not valid JSON"])
    with damaged(path, edit_json(models=[{**models[0], "dir": 5}, *models[1:]])):
        run_case("records: training.json models[0].dir not a string, generate", store,
                 ["generate", "ref", "--dataset", "g2"], ["runs/ref/models/training.json", "'models[0].dir'"])
    assert not (store.root / "datasets" / "g2").exists()


def test_damaged_generator_config(store):
    """The generator's config is checked against GANConfig when loaded (here through the library:
    `cci generate` reaches it inside its flow, where the same error is its one line)."""
    from cci_core.generate.sampling import load_discriminator, load_generator
    mdir = store.root / "runs" / "ref" / "models" / "cluster-0"
    model = json.loads((mdir / "generator.json").read_text())["model"]
    with damaged(mdir / "generator.json", edit_json(model={**model, "z_dim": "16"})), \
            pytest.raises(ValueError, match=r"runs/ref/models/cluster-0/generator.json: field 'model.z_dim' is '16'"):
        load_generator(mdir)
    with damaged(mdir / "generator.json", edit_json(model={**model, "width": 8})), \
            pytest.raises(ValueError, match=r"field 'model.width' is not a setting of GANConfig"):
        load_generator(mdir)
    state = sorted((mdir / "checkpoints").glob("step-*"))[-1] / "state.json"
    with damaged(state, cut_json), pytest.raises(ValueError, match=r"checkpoints/step-\d+/state.json is not valid JSON"):
        load_discriminator(mdir)


def test_record_errors_name_the_file_relative_to_the_store():
    """A local or object-store root, given or not: the file is shown from the store's own folders."""
    from cci_core.store.record_check import shown
    assert shown("/data/s/runs/km/run.json", "/data/s") == "runs/km/run.json"
    assert shown("s3://bucket/p/corpora/d28/corpus.json", "s3://bucket/p") == "corpora/d28/corpus.json"
    assert shown("/elsewhere/runs/x/datasets/gen/latest.json") == "datasets/gen/latest.json"
    assert shown("/tmp/other/file.json") == "/tmp/other/file.json"
