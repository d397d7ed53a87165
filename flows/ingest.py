"""The ingest flow: decode batches in parallel on Dask, keep what is new, write, commit."""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.utilities.annotations import unmapped

from cci_core.ingest import ingest
from cci_core.store.store import Store
from flows import naming
from flows.common import artifact_key, file_link
from flows.settings import IngestSettings
from tasks.common import asset_for
from tasks.ingest import (
    commit_task,
    decode_batch_task,
    plan_ingest_task,
    prepare_writes_task,
    select_new_task,
    write_rows_task,
)


@flow(name="cci-ingest", log_prints=True, flow_run_name=naming.ingest_name)
def ingest_flow(settings: IngestSettings) -> dict:
    """Ingest the source into the corpus: a new corpus version with only the images not stored yet."""
    log = get_run_logger()
    corpus = settings.corpus
    store_root = str(Store(settings.store_root).ensure().root)
    plan = plan_ingest_task(store_root, settings.source, corpus, **settings.options())
    batches = plan.pop("batches")
    log.info("Source %s (%s, %d items) -> corpus %s v%d: %d batches, shape %s",
             plan["source"], plan["source_kind"], plan["source_count"], corpus, plan["version"],
             len(batches), "x".join(map(str, plan["shape"])))
    if plan["value_range"]:
        log.info("Array values read as the range %s (decided from all of the source)%s",
                 plan["value_range"], ", out-of-range values clipped" if plan["clip"] else "")
    try:
        progress = create_progress_artifact(0.0, description=f"ingest {corpus}: batches decoded")
        futures = decode_batch_task.map(unmapped(plan), batches)
        decoded = []
        for fut in as_completed(futures):
            decoded.append(fut.result())
            update_progress_artifact(progress, 100.0 * len(decoded) / len(batches))
        selection = select_new_task(plan, decoded)
        if selection["n_new"]:
            groups = prepare_writes_task(plan, selection)
            written = sum(f.result() for f in write_rows_task.map(unmapped(plan), groups))
            log.info("Wrote %d new rows in %d parallel region writes", written, len(groups))
        summary = commit_task.with_options(assets=[asset_for("corpus", corpus)])(store_root, plan, selection)
    finally:
        # also when a step failed (a re-run must not find the corpus locked); not a task, so that it
        # runs even when the flow is failing because task runs cannot start
        ingest.release_lock(plan)
    quarantine_md = "\n".join(f"| `{q['source']}` | {q['reason']} |" for q in summary["quarantine"][:50])
    create_markdown_artifact(
        key=artifact_key("ingest", corpus),
        description=f"ingest of {corpus}",
        markdown=(f"# Corpus `{corpus}` v{summary['version']}\n\n"
                  f"- rows: {summary['n_rows']} (added {summary['added']}, duplicates {summary['duplicates']}, "
                  f"quarantined {summary['quarantined']})\n- shape: {'x'.join(map(str, summary['shape']))}\n"
                  f"- lineage: `cci lineage show {summary['artifact_id']}`\n"
                  f"- folder: {file_link(Store(store_root).corpus_dir(corpus))}\n"
                  + (f"\n| quarantined file | reason |\n|---|---|\n{quarantine_md}\n" if quarantine_md else "")))
    return summary
