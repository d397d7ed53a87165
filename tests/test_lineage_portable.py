"""Portable lineage: store-relative URIs (a copied store resolves every URI in its new place),
`cci lineage show` listing each artifact once (with --depth), and `cci lineage export` as
OpenLineage run events (checked with the OpenLineage client's own models), PROV-JSON and DOT."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from cci_core.store.lineage import STORE_SCHEME, LineageStore
from cci_core.store.lineage_export import closure, export


def _ancestry(lin: LineageStore, ref: str) -> set[str]:
    return {a.id for a in closure(lin, ref)}


def test_a_copied_store_resolves_every_lineage_uri(published_store, tmp_path):
    copy = tmp_path / "moved" / "store"
    shutil.copytree(published_store.root, copy)
    lin = LineageStore(f"sqlite:///{copy / 'lineage.db'}")
    arts = lin.list(limit=10**6)
    kinds = {a.kind for a in arts}
    assert {"source", "corpus", "pca", "embeddings", "clustering", "partition", "classifier", "model",
            "report", "dataset"} <= kinds
    for a in arts:
        if a.kind == "source":  # outside the store: kept as given
            assert a.stored_uri == a.uri == "builtin:digits"
            continue
        assert a.stored_uri.startswith(STORE_SCHEME) and str(published_store.root) not in a.stored_uri, a
        assert Path(a.uri).is_relative_to(copy) and Path(a.uri).exists(), a
    ds = lin.resolve("dataset:gen@v1")
    assert ds.stored_uri == "store://datasets/gen/v1" and ds.uri == str(copy / "datasets" / "gen" / "v1")


def test_records_outside_the_store_and_old_absolute_ones_read_as_written(tmp_path):
    lin = LineageStore(f"sqlite:///{tmp_path / 'lineage.db'}")
    outside = lin.record("image_file", "x.png", "/elsewhere/x.png", "h1")
    old = LineageStore(lin.url, root=tmp_path / "other").record("corpus", "c@v1", str(tmp_path / "corpora" / "c"), "h2")
    assert outside.stored_uri == outside.uri == "/elsewhere/x.png"
    assert lin.get(old.id).uri == str(tmp_path / "corpora" / "c")  # absolute as recorded, read as is
    new = lin.record("corpus", "c@v2", (tmp_path / "corpora" / "c").as_uri(), "h3")
    assert new.stored_uri == "store://corpora/c" and new.uri == str(tmp_path / "corpora" / "c")


def test_show_prints_each_artifact_once_and_depth_cuts(published_store, run_cci):
    lin = LineageStore(published_store.lineage_url)
    ancestry = _ancestry(lin, "dataset:gen@v1")
    res = run_cci("lineage", "show", "dataset:gen@v1", "--store", published_store.root)
    assert res.returncode == 0, res.stderr
    tree = res.stdout.split("\n  kind:")[0]
    ids = re.findall(r"\b[a-z_]+-[0-9a-f]{16}\b", tree)
    full = [i for line in tree.splitlines() if "(shown above)" not in line
            for i in re.findall(r"\b[a-z_]+-[0-9a-f]{16}\b", line)[:1]]
    assert sorted(full) == sorted(ancestry)  # every ancestor, each printed in full exactly once
    assert set(ids) == ancestry and len(tree.splitlines()) < 3 * len(ancestry)
    one = run_cci("lineage", "show", "dataset:gen@v1", "--depth", "1", "--store", published_store.root)
    shown = set(re.findall(r"\b[a-z_]+-[0-9a-f]{16}\b", one.stdout.split("\n  kind:")[0]))
    ds = lin.resolve("dataset:gen@v1")
    assert one.returncode == 0 and shown == {ds.id, *(i for i, _ in ds.inputs)} and "raise --depth" in one.stdout


def test_openlineage_export_validates_with_the_client_models(published_store, run_cci, tmp_path):
    from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
    from openlineage.client.generated.dataset_version_dataset import DatasetVersionDatasetFacet
    from openlineage.client.serde import Serde

    out = tmp_path / "events.jsonl"
    res = run_cci("lineage", "export", "dataset:gen@v1", "--format", "openlineage", "-o", out,
                  "--store", published_store.root)
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in out.read_text().splitlines()]

    def ds(cls, d):
        v = d["facets"]["version"]
        return cls(namespace=d["namespace"], name=d["name"],
                   facets={"version": DatasetVersionDatasetFacet(datasetVersion=v["datasetVersion"],
                                                                 producer=v["_producer"])})
    for e in events:  # the client's models check the run id (a UUID), the time, the URLs
        model = RunEvent(eventType=RunState(e["eventType"]), eventTime=e["eventTime"], producer=e["producer"],
                         run=Run(runId=e["run"]["runId"]), job=Job(namespace=e["job"]["namespace"], name=e["job"]["name"]),
                         inputs=[ds(InputDataset, d) for d in e["inputs"]],
                         outputs=[ds(OutputDataset, d) for d in e["outputs"]])
        assert Serde.to_dict(model) == Serde.to_dict(e)
    lin = LineageStore(published_store.lineage_url)
    outputs = [d["facets"]["version"]["datasetVersion"] for e in events for d in e["outputs"]]
    inputs = {d["facets"]["version"]["datasetVersion"] for e in events for d in e["inputs"]}
    assert sorted(outputs) == sorted(_ancestry(lin, "dataset:gen@v1"))  # each artifact made by one run
    assert inputs <= set(outputs) and len({e["run"]["runId"] for e in events}) == len(events)


def test_prov_and_dot_exports(published_store):
    lin = LineageStore(published_store.lineage_url)
    arts = closure(lin, "dataset:gen@v1")
    prov = json.loads(export(lin, "prov", "dataset:gen@v1"))
    assert set(prov["entity"]) == {f"cci:{a.id}" for a in arts}
    assert len(prov["wasDerivedFrom"]) == sum(len(a.inputs) for a in arts) == len(prov["used"])
    assert all(e["ccis:uri"].startswith(STORE_SCHEME) or e["ccis:uri"] == "builtin:digits"
               for e in prov["entity"].values())
    dot = export(lin, "dot", "dataset:gen@v1")
    assert dot.startswith("digraph lineage {") and dot.count(" -> ") == sum(len(a.inputs) for a in arts)
    assert all(f'"{a.id}" [label=' in dot for a in arts)


def test_by_uri_finds_the_newest_record_of_a_path_in_one_query(tmp_path):
    lin = LineageStore(f"sqlite:///{tmp_path / 'lineage.db'}", root=tmp_path)
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    target = tmp_path / "runs" / "r1" / "model"
    first = lin.record("model", "r1/model", str(target), "h1")
    newer = lin.record("model", "r1/model", str(target), "h2")
    lin.record("report", "r1/model", str(target), "h3")
    old = lin.record("model", "old", "/elsewhere/model", "h4")  # outside the store: kept as written
    for _ in range(1100):  # more records than list()'s default limit: a scan would miss the first ones
        lin.record("noise", "n", str(tmp_path / "noise"), "x")
    assert lin.by_uri(str(target), kind="model").id == newer.id != first.id
    assert lin.by_uri(f"file://{target}", kind="model").id == newer.id
    assert lin.by_uri("/elsewhere/model").id == old.id
    assert lin.by_uri(str(tmp_path / "nothing")) is None


def test_two_writers_recording_the_same_artifact_at_once_both_get_it(tmp_path, monkeypatch):
    """Two writers of one run (a resumed run and the killed one's last task) record the same PCA in
    the same place: both get the same artifact id. The second writer's check can run before the
    first one's insert commits; its insert must then return the first one's record, not fail on
    the duplicate key."""
    lin = LineageStore(f"sqlite:///{tmp_path / 'lineage.db'}", root=tmp_path)
    first = lin.record("pca", "r1/pca", str(tmp_path / "r1" / "pca"), "h", params={"n": 5})
    real_find, calls = LineageStore.find, []

    def find_before_the_other_commit(self, aid):  # the interleaving: the check sees nothing yet
        calls.append(aid)
        return None if len(calls) == 1 else real_find(self, aid)

    monkeypatch.setattr(LineageStore, "find", find_before_the_other_commit)
    again = lin.record("pca", "r1/pca", str(tmp_path / "r1" / "pca"), "h", params={"n": 5}, metrics={"var": 0.5})
    monkeypatch.undo()
    assert again.id == first.id and len(calls) >= 2
    assert lin.get(first.id).metrics == {"var": 0.5} and len(lin.list(kind="pca")) == 1
