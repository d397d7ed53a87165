"""The whole pipeline as one flow of subflows under a real Prefect API, re-run without redoing
anything, then a refresh with new Fashion-MNIST images that retrains only the clusters that
changed and publishes a new dataset version while the previous one stays readable."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cci_core.ingest.idx import read_idx
from cci_core.store.datasets import open_dataset
from cci_core.store.lineage import LineageStore
from cci_core.store.runs import read_run
from cci_core.store.store import Store

FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not FMNIST.exists(), reason="apt-get install dataset-fashion-mnist")

TINY = dict(k=4, refine_rounds=1, refine_steps=20,
            refine_options={"cl_epochs": 0.5, "cl_min_steps": 0, "recluster": "kmeans", "width": 8, "batch_size": 64},
            train_steps=10, min_size=20, per_cluster=8, eval_samples=40,
            eval_options={"ref_steps": 20, "max_real": 100, "kid_subset_size": 20, "kid_subsets": 5},
            train_options={"width": 8, "z_dim": 16, "batch_size": 32, "checkpoint_every": 10, "baseline": False})


def _write_pngs(folder: Path, images: np.ndarray, start: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{start + i:05d}.png")


def test_pipeline_then_refresh(tmp_path, prefect_api):
    from flows.pipeline import pipeline_flow
    from flows.refresh import refresh_flow
    X = read_idx(FMNIST / "t10k-images-idx3-ubyte.gz")
    y = read_idx(FMNIST / "t10k-labels-idx1-ubyte.gz")
    src = tmp_path / "src"
    first = np.flatnonzero(np.isin(y, [1, 7, 8, 9]))[:600]  # trousers, sneakers, bags, ankle boots
    _write_pngs(src, X[first], 0)
    store = Store(tmp_path / "store")
    args = dict(source=str(src), corpus="fm", store_root=str(store.root), size=None, channels=None, **TINY)

    summary = pipeline_flow(**args)
    ds1 = summary["dataset"]
    assert ds1["version"] == 1 and ds1["n_images"] > 0
    v1 = open_dataset("fm-generated", 1, store=store)
    assert len(v1) == ds1["n_images"] and set(v1.manifest["cluster"]) <= set(range(4))
    # the dataset's lineage walks back to the source listing through models, clusterings and the corpus
    lin = LineageStore(store.lineage_url)
    kinds, node = set(), [lin.upstream(ds1["artifact_id"])]
    while node:
        n = node.pop()
        kinds.add(n["artifact"].kind)
        node += n["inputs"]
    assert {"dataset", "model", "partition", "classifier", "clustering", "pca", "embeddings", "corpus",
            "source"} <= kinds

    again = pipeline_flow(**args)  # nothing new, same parameters: every stage is reused
    assert again["cluster_run"] == summary["cluster_run"] and again["refined_run"] == summary["refined_run"]
    assert again["dataset"]["version"] == 1 and again["dataset"].get("reused")

    # 500 new ankle boots: the cluster(s) they join grow, the others do not
    boots = np.flatnonzero(y == 9)[-500:]
    _write_pngs(src, X[boots], 10000)
    res = refresh_flow(str(src), "fm", store_root=str(store.root), retrain_threshold=0.2, per_cluster=8)
    assert res["changed"] and res["drift"]["n_new"] == 500 and res["refreshed_from"] == summary["refined_run"]
    grown = {int(c) for c, g in res["drift"]["growth"].items() if g > 0.2}
    assert set(res["retrained"]) == grown and grown and res["carried_over"]
    assert set(res["retrained"]).isdisjoint(res["carried_over"])
    new_run = read_run(store, res["run_id"])
    assert new_run["n_rows"] == 1100 and new_run["corpus_version"] == 2
    # the retrained clusters are fine-tuned from the shared start the refreshed run trained
    trained = json.loads((store.run_dir(summary["refined_run"]) / "models" / "training.json").read_text())
    shared_id = next(m["artifact_id"] for m in trained["models"] if m["kind"] == "shared")
    retrained = json.loads((store.run_dir(res["run_id"]) / "models" / "training.json").read_text())
    lin = LineageStore(store.lineage_url)
    for m in retrained["models"]:
        if m["cluster"] in res["retrained"]:
            assert (shared_id, "model") in lin.get(m["artifact_id"]).inputs
    # its new rows have no embedding: no explorer page, and asking for one names the run to explore instead
    from cci_core.cluster.explore import build_explorer, explorer_path
    assert not explorer_path(new_run["run_dir"]).exists()
    with pytest.raises(LookupError, match=f"explore '{summary['refined_run']}'"):
        build_explorer(store, res["run_id"])
    assert res["dataset"]["version"] == 2 and open_dataset("fm-generated", store=store).version == 2
    assert np.array_equal(open_dataset("fm-generated", 1, store=store).images[:], v1.images[:])

    quiet = refresh_flow(str(src), "fm", store_root=str(store.root))
    assert not quiet["changed"] and "Nothing new" in quiet["message"]
    assert open_dataset("fm-generated", store=store).version == 2
