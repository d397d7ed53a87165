"""A published version opens in everyday tools, as a consumer without the project would open it:
Hugging Face ``datasets`` (parquet with Image + ClassLabel features, imagefolder with labels), DuckDB
and pyarrow, in a plain venv that has none of the project, prefect or torch. Its cards say what it
is (license, intended use, limitations, named clusters, generation quality) with relative paths."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap

import numpy as np
import pandas as pd
import pytest
import yaml
from consumer_env import consumer_python

from cci_core.cluster.cluster_run import partition_rows
from cci_core.store.corpus import open_corpus
from cci_core.store.datasets import export_png, open_dataset

CONSUMER = textwrap.dedent("""
    import json, sys
    import datasets, duckdb
    version, exported = sys.argv[1], sys.argv[2]
    ds = datasets.load_dataset("parquet", data_files=f"{version}/data.parquet", split="train")
    feats = ds.features
    rows = [ds[i] for i in range(5)]
    hub = datasets.load_dataset(version, split="train")  # the README.md front matter names data.parquet
    accepted = datasets.load_dataset(version, "accepted", split="train")  # and accepted.parquet
    folder = datasets.load_dataset("imagefolder", data_dir=exported, split="train").sort("index")
    duck = duckdb.sql(f"SELECT cluster, count(*) AS n, sum(accepted::INT) AS ok FROM '{version}/manifest.parquet' "
                      "GROUP BY cluster ORDER BY cluster").fetchall()
    print(json.dumps({
        "n": len(ds), "image_feature": type(feats["image"]).__name__, "cluster_feature": type(feats["cluster"]).__name__,
        "names": feats["cluster"].names, "pil": [type(r["image"]).__name__ for r in rows],
        "sums": [sum(r["image"].getdata()) for r in rows], "clusters": [r["cluster"] for r in rows],
        "hub_n": len(hub), "hub_names": hub.features["cluster"].names,
        "accepted_index": list(accepted["index"]), "accepted_flags": list(accepted["accepted"]),
        "accepted_image": type(accepted.features["image"]).__name__,
        "folder_n": len(folder), "folder_columns": folder.column_names,
        "folder_cluster_names": folder["cluster_name"][:5], "folder_clusters": folder["cluster"][:5],
        "folder_sums": [sum(folder[i]["image"].getdata()) for i in range(5)],
        "duck": duck,
        "foreign": sorted(m for m in sys.modules if m.split(".")[0] in ("cci_core", "torch", "prefect", "flows")),
    }))
""")


@pytest.fixture(scope="module")
def consumer():
    try:
        return consumer_python()
    except Exception as exc:  # building it is part of the test: a failure fails, it does not skip
        pytest.fail(f"the consumer venv could not be built: {exc}")


def test_hugging_face_and_duckdb_read_a_published_version_without_the_project(published_store, consumer,
                                                                           tmp_path):
    ds = open_dataset("gen", store=published_store)
    # the consumer has only the version folder, copied elsewhere, and an imagefolder export
    version = tmp_path / "gen-v1"
    shutil.copytree(ds.path, version)
    exported = export_png(ds, tmp_path / "gen-png")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PREFECT", "CCI"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    res = subprocess.run([str(consumer), "-c", CONSUMER, str(version), str(exported)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])

    m, imgs = ds.manifest, ds.images[:]
    card = ds.card
    names = [card["clusters"][str(c)]["name"] for c in range(3)]
    assert got["foreign"] == []
    assert (got["n"], got["hub_n"], got["folder_n"]) == (len(ds),) * 3 == (36,) * 3
    assert (got["image_feature"], got["cluster_feature"]) == ("Image", "ClassLabel")
    assert got["names"] == got["hub_names"] == names and all(n.startswith(f"cluster-{c} (mostly ")
                                                              for c, n in enumerate(names))
    assert got["pil"] == ["PngImageFile"] * 5
    assert got["accepted_index"] == [int(i) for i in m["index"][m["accepted"]]] and all(got["accepted_flags"])
    assert 0 < len(got["accepted_index"]) < len(ds) and got["accepted_image"] == "Image"
    assert got["sums"] == [int(x) for x in imgs[:5].astype(np.int64).sum(axis=(1, 2, 3))]
    assert got["clusters"] == [int(c) for c in m["cluster"][:5]]
    assert {"image", "index", "cluster", "cluster_name", "accepted"} <= set(got["folder_columns"])
    assert got["folder_sums"] == got["sums"] and got["folder_clusters"] == got["clusters"]
    assert got["folder_cluster_names"] == [names[c] for c in got["clusters"]]
    counts = m.groupby("cluster").agg(n=("accepted", "size"), ok=("accepted", "sum"))
    assert got["duck"] == [[int(c), int(r.n), int(r.ok)] for c, r in counts.iterrows()]


def test_cards_say_what_the_version_is_with_relative_paths(published_store):
    ds = open_dataset("gen", store=published_store)
    card, readme = ds.card, (ds.path / "README.md").read_text()
    everything = readme + (ds.path / "card.json").read_text()
    assert str(published_store.root) not in everything and "/tmp" not in everything
    front = yaml.safe_load(readme.split("---\n")[1])
    assert front["license"] == card["license"] == "cc-by-4.0"  # scikit-learn's digits (UCI, CC BY 4.0)
    assert [(c["config_name"], c["data_files"]) for c in front["configs"]] == [("all", "data.parquet"),
                                                                              ("accepted", "accepted.parquet")]
    assert front["configs"][0]["default"] and front["task_categories"]
    labels = open_corpus(published_store, "d28").labels()
    for c, e in card["clusters"].items():  # majority label and purity against the corpus's true labels
        counts = pd.Series(labels[partition_rows(published_store, "ref", int(c))]).value_counts()
        assert e["majority_label"] == counts.index[0] and e["purity"] == round(counts.iloc[0] / counts.sum(), 3)
        assert e["name"] == f"cluster-{c} (mostly {e['majority_label']}, {e['purity']:.2f})"
        assert f"| {c} | {e['name']} | {e['size']:,} | {e['majority_label']} | {e['purity']:.2f} |" in readme
    assert sum(e["size"] for e in card["clusters"].values()) == 1797
    ev = card["evaluation"]
    assert ev["group"] == "per_cluster" and ev["fid"] > 0 and 0 <= ev["coverage"] <= 1
    report = json.loads((published_store.run_dir("ref") / "reports" / "generation.json").read_text())
    measured = report["reports"]["classifier"]
    assert ev["fid"] == round(measured["per_cluster"]["fid"], 4) and ev["n_fake"] == measured["per_cluster"]["n_fake"]
    assert ev["floor"]["fid"] == round(report["floor"]["classifier"]["fid"], 4) < ev["fid"]
    assert ("baseline" in ev) == ("baseline" in measured)  # the tiny run trains no baseline
    assert sorted(ev["per_cluster"], key=int) == [str(c) for c in report["trained_clusters"]]
    assert all("fid" in e and e["n_fake"] > 0 for e in ev["per_cluster"].values())
    assert ev["feature_space"] == "classifier" and ev["feature_space_note"]
    assert (f"| these images' models | {ev['n_fake']} / {ev['n_real']} | {ev['fid']:.4g} |" in readme
            and f"| real vs real (the floor) | {ev['floor']['n_fake']} / {ev['floor']['n_real']} | "
                f"{ev['floor']['fid']:.4g} |" in readme and "not FID" in readme)
    assert "## Intended use" in readme and "## Limitations" in readme
    assert card["lineage"]["artifact_id"] in readme
    assert card["how_to_read"].startswith("paths relative to the version folder")


def test_clusters_are_named_by_majority_source_label(tmp_path):
    from cci_core.store.dataset_card import cluster_profile, label_names, source_license
    source = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
    labels = np.array(["7"] * 91 + ["5"] * 9 + [None] * 5 + ["0"] * 3, dtype=object)
    parts = []
    for c, rows in enumerate([np.arange(105), np.arange(105, 108)]):
        path = tmp_path / f"cluster-{c:03d}.parquet"
        pd.DataFrame({"row": rows}).to_parquet(path)
        parts.append({"cluster": c, "count": len(rows), "path": str(path)})
    prof = cluster_profile(parts, labels, label_names(source))
    assert prof["0"] == {"size": 105, "name": "cluster-0 (mostly Sneaker, 0.91)", "majority_label": "Sneaker",
                         "purity": 0.91, "labelled": 100}  # unlabelled rows do not count
    assert prof["1"]["name"] == "cluster-1 (mostly T-shirt/top, 1.00)"
    assert cluster_profile(parts, None)["1"] == {"size": 3, "name": "cluster-1"}
    assert source_license(source) == "mit" and source_license("/data/photos") == "other"
