"""Prefect tasks around the ingest steps of :mod:`cci_core.ingest.ingest`: paths and counts only."""
from __future__ import annotations

from prefect import task
from prefect.assets import materialize

from cci_core.ingest import ingest
from cci_core.store.lineage import LineageStore
from cci_core.store.store import Store
from tasks.common import annotate_asset, asset_for, producer


@task(name="plan-ingest", task_run_name="plan ingest {corpus}")
def plan_ingest_task(store_root: str, source: str, corpus: str, **options) -> dict:
    return ingest.plan_ingest(Store(store_root), source, corpus, **options)


@task(name="decode-batch", retries=1, retry_delay_seconds=1, task_run_name="decode {plan[corpus]} batch {batch[batch]}")
def decode_batch_task(plan: dict, batch: dict) -> dict:
    return ingest.decode_batch(plan, batch)


@task(name="select-new", task_run_name="select new {plan[corpus]}")
def select_new_task(plan: dict, decoded: list[dict]) -> dict:
    return ingest.select_new(plan, decoded)


@task(name="prepare-writes", task_run_name="prepare writes {plan[corpus]}")
def prepare_writes_task(plan: dict, selection: dict) -> list[list[dict]]:
    """Size the image array for the new rows, then group the writes so that no two share a chunk."""
    ingest.prepare_array(plan, selection)
    return ingest.plan_writes(plan, selection)


@task(name="write-rows", retries=1, retry_delay_seconds=1, task_run_name="write rows {plan[corpus]}")
def write_rows_task(plan: dict, segments: list[dict]) -> int:
    return ingest.write_segments(plan, segments)


@materialize("cci://corpus/pending", name="commit-corpus-version", task_run_name="commit {plan[corpus]}")
def commit_task(store_root: str, plan: dict, selection: dict) -> dict:
    store = Store(store_root)
    summary = ingest.commit_ingest(store, plan, selection, producer=producer())
    if summary["artifact_id"]:
        annotate_asset(asset_for("corpus", plan["corpus"]),
                       LineageStore(store.lineage_url).get(summary["artifact_id"]))
    return summary
