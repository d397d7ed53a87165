"""`cci generate`: a run's generators publish a dataset version with a manifest, a card and a
lineage chain back to the source; versions are immutable and `latest` moves."""
from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_run import train_tiny

from cci_core.generate import dataset_run
from cci_core.store.datasets import open_dataset
from cci_core.store.lineage import LineageStore
from cci_core.store.store import Store


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """digits at 28x28, k-means k=3, a tiny refinement (the classifier), tiny per-cluster GANs."""
    return train_tiny(Store(tmp_path_factory.mktemp("gen")))


def test_generate_publishes_a_scored_version_with_lineage_to_the_source(trained):
    store = trained
    out = dataset_run.generate_dataset(store, "ref", "gen", per_cluster=12, threshold=0.4, seed=3, log=lambda _: None)
    assert out["version"] == 1 and out["n_images"] == 36 and out["classifier"] == "CCI classifier"
    ds = open_dataset("gen", store=store)
    m = ds.manifest
    assert list(m["cluster"].value_counts().sort_index()) == [12, 12, 12]
    assert set(dataset_run.MANIFEST_SCHEMA) <= set(m.columns)
    expected = (m["classifier_label"] == m["cluster"]) & (m["confidence"] >= 0.4)
    assert (m["accepted"] == expected).all() and int(m["accepted"].sum()) == out["accepted"]
    run_models = json.loads((store.run_dir("ref") / "models" / "training.json").read_text())["model_artifact_ids"]
    assert set(m["model_artifact_id"]) <= set(run_models.values())

    # an image can be drawn again from its model, seed and draw index
    from cci_core.generate.sampling import generate, load_generator
    row = m.iloc[20]
    again = generate(load_generator(store.run_dir("ref") / "models" / row["model"]), int(row["draw"]) + 1,
                     seed=int(row["seed"]))[int(row["draw"])]
    assert np.array_equal(again, ds.images[int(row["index"])])

    card = ds.card
    assert card["lineage"]["artifact_id"] == out["artifact_id"] and card["source_corpus"]["name"] == "d28"
    lin = LineageStore(store.lineage_url)
    tree = lin.upstream(out["artifact_id"])
    kinds = set()

    def walk(node):
        kinds.add(node["artifact"].kind)
        for child in node["inputs"]:
            walk(child)
    walk(tree)
    assert {"dataset", "model", "partition", "classifier", "clustering", "pca", "corpus", "source"} <= kinds

    second = dataset_run.generate_dataset(store, "ref", "gen", per_cluster=4, seed=4, log=lambda _: None)
    assert second["version"] == 2 and open_dataset("gen", store=store).version == 2
    assert len(open_dataset("gen", 1, store=store)) == 36  # the earlier version is untouched


def test_generate_bad_input(trained):
    store = trained
    with pytest.raises(ValueError, match="no trained generators; run `cci train km`"):
        dataset_run.generate_dataset(store, "km", "x")
    with pytest.raises(LookupError, match="no run 'nope'"):
        dataset_run.generate_dataset(store, "nope", "x")
    with pytest.raises(ValueError, match="--per-cluster 0"):
        dataset_run.generate_dataset(store, "ref", "x", per_cluster=0)
    with pytest.raises(ValueError, match="no conditional generators"):
        dataset_run.generate_dataset(store, "ref", "x", models="conditional")
    with pytest.raises(ValueError, match="invalid dataset name"):
        dataset_run.generate_dataset(store, "ref", "../x")
    assert not (store.root / "datasets" / "x").exists()


def test_datasets_cli_reads_lists_and_exports(trained, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app
    store = trained
    dataset_run.generate_dataset(store, "ref", "cli-gen", per_cluster=3, log=lambda _: None)
    runner = CliRunner()
    res = runner.invoke(app, ["datasets", "list", "--store", str(store.root), "--json"])
    assert res.exit_code == 0 and {"name": "cli-gen", "versions": [1], "latest": 1} in json.loads(res.output)
    res = runner.invoke(app, ["datasets", "show", "cli-gen", "--store", str(store.root), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["n_images"] == 9
    res = runner.invoke(app, ["datasets", "export", "cli-gen", str(tmp_path / "png"), "--store", str(store.root)])
    assert res.exit_code == 0 and len(list((tmp_path / "png").glob("*.png"))) == 9
    res = runner.invoke(app, ["datasets", "show", "cli-gen", "--version", "v7", "--store", str(store.root)])
    assert res.exit_code == 1 and "no committed version 7" in res.output
    res = runner.invoke(app, ["lineage", "show", "cli-gen@v1", "--store", str(store.root), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["kind"] == "dataset"
