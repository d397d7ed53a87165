"""Two flows: ``cci-features`` compares every feature space of a run on one table, and
``cci-self-condition`` trains a self-conditioned GAN and publishes its clustering as a new run."""
from __future__ import annotations

from dataclasses import asdict

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from cci_core.store.store import Store
from flows import naming
from flows.common import artifact_key, png_markdown
from flows.runtime import gpu_annotation
from flows.settings import FeaturesSettings, SelfCondSettings
from tasks.common import asset_for
from tasks.features import (
    embeddings_asset,
    evaluate_space_task,
    extract_space_task,
    features_report_asset,
    finish_selfcond_task,
    locate_space_task,
    plan_features_task,
    selfcond_partitions_task,
    start_selfcond_task,
    train_corpus_vae_task,
    train_selfcond_task,
    write_features_report_task,
)


@flow(name="cci-features", log_prints=True, flow_run_name=naming.features_name)
def features_flow(settings: FeaturesSettings) -> dict:
    """Compare every feature space of the run: k-means ACC/NMI/ARI + sampled silhouette, and linear /
    k-NN / random-forest probes on 1/10/100 % of the labels when the corpus has labels.

    ``vae_steps`` first trains one VAE on the whole corpus (the ``vae`` space).
    """
    log = get_run_logger()
    run_id, params, vae_steps = settings.run_id, settings.params, settings.vae_steps
    store_root = str(Store(settings.store_root).root)
    if vae_steps:
        with gpu_annotation():
            vae = train_corpus_vae_task.submit(store_root, run_id, vae_steps, params.seed, params.device).result()
        log.info("Trained the whole-corpus VAE of run %s: %d steps (%s)", run_id, vae["steps"], vae["artifact_id"])
    plan = plan_features_task(store_root, run_id, asdict(params))
    for s in plan["skipped"]:
        log.warning("Feature space %s not compared: %s", s["space"], s["reason"])
    if plan["probe_note"]:
        log.warning(plan["probe_note"])
    with gpu_annotation() as on_gpu:
        futures = []
        for s in plan["spaces"]:
            if s["source"] in ("corpus", "pca"):
                futures.append(locate_space_task.with_options(name=f"locate-{s['space']}").submit(plan, s))
            else:
                asset = embeddings_asset(run_id, s["space"])
                deps = [asset_for("corpus", plan["corpus"])]
                futures.append(extract_space_task.with_options(name=f"extract-{s['space']}", assets=[asset],
                                                               asset_deps=deps).submit(plan, s))
        extracted = [f.result() for f in futures]
    for e in extracted:
        log.info("Space %s: %d features (%s)%s", e["space"], e["dim"], e["note"],
                 f", extracted on {e['device']} in {e['extract_seconds']} s" if e.get("device") else "")
    results = [f.result() for f in [evaluate_space_task.with_options(name=f"evaluate-{e['space']}").submit(plan, e)
                                    for e in extracted]]
    deps = [asset_for("corpus", plan["corpus"])]
    summary = write_features_report_task.with_options(assets=[features_report_asset(run_id)],
                                                      asset_deps=deps).submit(plan, results).result()
    create_table_artifact(key=artifact_key("features", run_id), table=summary["table"],
                          description=f"feature spaces of run {run_id}: k-means acc/nmi/ari, silhouette, "
                                      f"probe accuracy at {', '.join(f'{100 * f:g}%' for f in params.fractions)} of "
                                      "the labels" + (f" ({plan['probe_note']})" if plan["probe_note"] else ""))
    create_markdown_artifact(key=artifact_key("features-report", run_id), description=f"feature spaces of run {run_id}",
                             markdown=summary["markdown"] + f"\n\nreport: `{summary['report']}` "
                                      f"({summary['report_artifact_id']})\n\n"
                                      + png_markdown(summary["chart"], "feature spaces"))
    summary["gpu_resource"] = on_gpu
    return summary


@flow(name="cci-self-condition", log_prints=True, flow_run_name=naming.selfcond_name)
def selfcond_flow(settings: SelfCondSettings) -> dict:
    """Train a self-conditioned GAN from the run (conditions: k-means of its discriminator's
    features, re-found every ``recluster_every`` steps) and publish its final clustering as
    a new run (default RUN-selfcond)."""
    log = get_run_logger()
    run_id, params = settings.run_id, settings.params
    store_root = str(Store(settings.store_root).root)
    plan = start_selfcond_task(store_root, run_id, asdict(params), settings.new_run_id)
    log.info("Self-conditioned GAN from run %s into run %s: k=%d, %d steps, re-clustering every %d",
             run_id, plan["run_id"], plan["k"], params.steps, params.recluster_every)
    with gpu_annotation() as on_gpu:
        cl = train_selfcond_task.with_options(assets=[asset_for("clustering", plan["run_id"])]).submit(plan).result()
    parts = selfcond_partitions_task.submit(plan, cl).result()
    run = finish_selfcond_task(plan, cl, parts)
    create_table_artifact(key=artifact_key("self-condition", plan["run_id"]),
                          table=[{k: h.get(k) for k in ("step", "changed", "passes", "acc", "nmi", "ari")}
                                 for h in cl["history"]],
                          description=f"self-conditioned GAN {plan['run_id']}: re-clustering after each phase")
    return {"run_id": plan["run_id"], "parent_run": run_id, "run_dir": plan["run_dir"], "status": run["status"],
            "k": plan["k"], "clustering_artifact_id": cl["clustering_artifact_id"],
            "model_artifact_id": cl["model_artifact_id"], "metrics": cl["metrics"], "sizes": cl["sizes"],
            "history": cl["history"], "timings": cl["timings"], "device": cl["device"], "partitions": parts,
            "training": run.get("training", {}), "gpu_resource": on_gpu}
