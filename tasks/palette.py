"""Prefect tasks around :mod:`cci_core.palette.palette_run`: dicts of paths and ids only.

The palette pass (histogram or Lloyd passes over every pixel) and the block-wise rendering run
their Dask graphs on the flow's cluster (:func:`tasks.common.cluster_compute`).
"""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.assets import materialize

from cci_core.palette import palette_run
from cci_core.store.lineage import LineageStore
from cci_core.store.store import Store
from tasks.common import annotate_asset, asset_for, cluster_compute, producer


def palette_asset(source: str, colors: int, space: str | None):
    return asset_for("palette", f"{source}/k{colors}-{space or 'auto'}")


def dataset_asset(dataset: str):
    return asset_for("dataset", dataset)


def _log():
    try:
        logger = get_run_logger()
        return logger.info
    except Exception:  # noqa: BLE001 - outside a run
        return None


@materialize("cci://palette/pending", name="learn-palette", task_run_name="palette {source} {colors} colours")
def learn_palette_task(store_root: str, source: str, colors: int, space: str | None = None, method: str = "auto",
                       seed: int = 0) -> dict:
    store = Store(store_root)
    with cluster_compute():
        out = palette_run.learn_palette_step(store, source, colors, space=space, method=method, seed=seed,
                                             producer=producer(), log=_log())
    annotate_asset(palette_asset(source, colors, space), LineageStore(store.lineage_url).get(out["palette_id"]))
    return out


@task(name="check-stylize", task_run_name="check stylize {source}")
def check_stylize_task(store_root: str, source: str, palette_id: str, dataset: str, mode: str) -> dict:
    return palette_run.check_stylize(Store(store_root), source, palette_id, dataset, mode)


@materialize("cci://dataset/pending", name="stylize", task_run_name="stylize {source} into {dataset}")
def stylize_task(store_root: str, source: str, palette_id: str, dataset: str, mode: str = "nearest",
                 dither: bool = False, seed: int = 0) -> dict:
    store = Store(store_root)
    with cluster_compute():
        out = palette_run.stylize_step(store, source, palette_id, dataset, mode=mode, dither=dither, seed=seed,
                                       producer=producer(), log=_log())
    annotate_asset(dataset_asset(dataset), LineageStore(store.lineage_url).get(out["artifact_id"]))
    return out


@task(name="segment-corpus", task_run_name="segment {source} k={k}")
def segment_corpus_task(store_root: str, source: str, k: int, space: str | None = None,
                        position_weight: float = 0.0, standardize: bool = True, seed: int = 0) -> dict:
    with cluster_compute():
        return palette_run.segment_corpus_step(Store(store_root), source, k, space=space,
                                               position_weight=position_weight, standardize=standardize,
                                               seed=seed, producer=producer())
