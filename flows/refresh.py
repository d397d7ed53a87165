"""The refresh flow (scheduled): ingest what is new, assign it with the run's classifier,
measure drift, retrain only the clusters that changed, publish a new dataset version."""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from cci_core.store.corpus import open_corpus
from cci_core.store.runs import lineage_store, read_run
from cci_core.store.store import Store
from flows.common import artifact_key
from flows.generate import generate_flow
from flows.ingest import ingest_flow
from flows.naming import call_tagged
from flows.runtime import on_flow_cluster
from flows.settings import GenerateSettings, IngestSettings
from tasks.refresh import assign_new_task, retrain_task


def latest_served_run(store: Store, corpus: str) -> str:
    """The newest finished run of CORPUS that has trained generators (what a refresh builds on)."""
    runs = [a for a in lineage_store(store).list(kind="model")]
    for art in runs:  # newest first
        run_id = art.params.get("run_id")
        if art.params.get("corpus") == corpus and run_id:
            try:
                if read_run(store, run_id).get("status") == "complete":
                    return run_id
            except LookupError:
                continue
    raise LookupError(f"no run of corpus {corpus!r} has trained generators to refresh; run the pipeline "
                      f"(`cci run`) first")


@flow(name="cci-refresh", log_prints=True, flow_run_name="refresh {corpus} from {source}")
def refresh_flow(source: str, corpus: str, store_root: str | None = None, run_id: str | None = None,
                 dataset: str | None = None, retrain_threshold: float = 0.1, low_confidence: float = 0.5,
                 per_cluster: int = 64, size: tuple[int, int] | None = None, channels: int | None = None,
                 seed: int = 0) -> dict:
    """Refresh CORPUS from SOURCE against RUN (default: its newest run with trained generators)."""
    log = get_run_logger()
    store = Store(store_root)
    root = str(store.root)
    run_id = run_id or latest_served_run(store, corpus)
    dataset = dataset or f"{corpus}-generated"
    ing = call_tagged(on_flow_cluster(ingest_flow), IngestSettings(source, corpus, store_root=root, size=size,
                                                                   channels=channels))
    version = open_corpus(store, corpus).version
    if not ing["changed"] or read_run(store, run_id)["n_rows"] >= open_corpus(store, corpus).n_rows:
        msg = (f"Nothing new in {source}: corpus {corpus} stays at v{version}, run {run_id} and dataset "
               f"{dataset} are unchanged.")
        log.info(msg)
        create_markdown_artifact(key=artifact_key("refresh", corpus), markdown=f"# Refresh of `{corpus}`\n\n{msg}\n",
                                 description="nothing new")
        return {"changed": False, "corpus_version": version, "run_id": run_id, "message": msg}

    drift = assign_new_task.submit(root, run_id, version, retrain_threshold, low_confidence).result()
    new_run = drift["run_id"]
    log.info("%d new images assigned (%s); %.1f%% below confidence %.2f; clusters changed beyond %.0f%%: %s",
             drift["n_new"], drift["method"], 100 * drift["low_confidence"], low_confidence,
             100 * retrain_threshold, drift["changed_clusters"] or "none")
    training = retrain_task.submit(root, new_run, drift["changed_clusters"]).result()
    published = call_tagged(on_flow_cluster(generate_flow), GenerateSettings(new_run, dataset, store_root=root,
                                                                             per_cluster=per_cluster, seed=seed))
    create_table_artifact(
        key=artifact_key("refresh-drift", corpus),
        table=[{"cluster": int(c), "new images": drift["added"][c], "growth": round(drift["growth"][c], 4),
                "retrained": int(c) in training["retrained"]} for c in drift["growth"]],
        description=f"refresh of {corpus} to v{version}: {drift['n_new']} new images")
    create_markdown_artifact(
        key=artifact_key("refresh", corpus), description=f"refresh of {corpus} to v{version}",
        markdown=(f"# Refresh of `{corpus}` to v{version}\n\n- new images: {drift['n_new']}\n"
                  f"- low-confidence share: {drift['low_confidence']:.3f}\n- size shift (TV distance): "
                  f"{drift['size_shift']:.4f}\n- retrained clusters: {training['retrained']}\n"
                  f"- carried over: {training['carried_over']}\n- new run: `{new_run}`\n"
                  f"- dataset: `{dataset}` v{published['version']}\n"))
    return {"changed": True, "corpus_version": version, "run_id": new_run, "refreshed_from": run_id,
            "drift": drift, "retrained": training["retrained"], "carried_over": training["carried_over"],
            "dataset": published}
