"""Prefect tasks around :mod:`cci_core.generate.dataset_run`: publish a generated dataset version,
then draw its sample grid."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.assets import materialize

from cci_core.common.imagegrid import make_grid, save_png
from cci_core.generate import dataset_run
from cci_core.store.datasets import open_dataset
from cci_core.store.lineage import LineageStore
from cci_core.store.store import Store
from tasks.common import annotate_asset, asset_for, producer, progress_artifact


@materialize("cci://dataset/pending", name="generate-and-publish", tags=["gpu"],
             task_run_name="generate {dataset} from {run_id}")
def generate_task(store_root: str, run_id: str, dataset: str, per_cluster: int, threshold: float, seed: int,
                  models: str | None) -> dict:
    store = Store(store_root)
    out = dataset_run.generate_dataset(store, run_id, dataset, per_cluster=per_cluster, threshold=threshold,
                                       seed=seed, models=models, producer=producer(),
                                       log=get_run_logger().info,
                                       progress=progress_artifact(f"generate {dataset} from {run_id}"))
    annotate_asset(asset_for("dataset", dataset), LineageStore(store.lineage_url).get(out["artifact_id"]))
    return out


@task(name="draw-generated-grid", task_run_name="sample grid {out[dataset]} v{out[version]}")
def sample_grid_task(store_root: str, out: dict, per_cluster: int = 8) -> str:
    """One row per cluster of the published version OUT: its first images (accepted ones first),
    saved in the run's pictures folder; returns the PNG's path."""
    import numpy as np
    store = Store(store_root)
    ds = open_dataset(out["dataset"], out["version"], store=store)
    m = ds.manifest.sort_values(["cluster", "accepted"], ascending=[True, False])
    rows = np.concatenate([g["index"].to_numpy()[:per_cluster] for _, g in m.groupby("cluster")])
    imgs = ds.images.get_orthogonal_selection((np.sort(rows),))
    order = np.argsort(np.argsort(rows))
    return str(save_png(make_grid(imgs[order], ncols=per_cluster), store.run_dir(out["run_id"]) / "pictures"
                        / f"generated-{out['dataset']}-v{out['version']}.png", scale=2))
