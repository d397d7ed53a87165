"""The train and evaluate flows: one generator per cluster fanned out to (GPU) tasks, then
honest measures of what they generate, side by side with an unconditional baseline."""
from __future__ import annotations

import contextlib
from dataclasses import asdict

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed
from prefect.utilities.annotations import unmapped

from cci_core.generate.evaluation_run import HEADLINE
from cci_core.store import fs
from cci_core.store.store import Store
from flows import naming
from flows.common import artifact_key, fig, file_link, png_markdown
from flows.runtime import gpu_annotation
from flows.settings import EvaluateSettings, TrainSettings
from tasks.cluster import partition_asset
from tasks.common import asset_for
from tasks.train import (
    evaluate_group_task,
    finish_training_task,
    model_asset,
    plan_evaluation_task,
    plan_training_task,
    prepare_references_task,
    register_models_task,
    report_asset,
    train_cluster_task,
    write_report_task,
)


@contextlib.contextmanager
def _gpu_context(gpu_resource: bool | None, log):
    with gpu_annotation(gpu_resource) as use:
        log.info("Tasks tagged gpu ask Dask for one GPU resource each" if use else
                 "No GPU resource requested (the workers advertise none): tasks tagged gpu run on any worker")
        yield


@flow(name="cci-train", log_prints=True, flow_run_name=naming.train_name)
def train_flow(settings: TrainSettings) -> dict:
    """Train one generator per cluster of the run (or one conditional GAN), plus the baseline."""
    log = get_run_logger()
    run_id, params = settings.run_id, settings.params
    model, mode, steps = params.model, params.mode, params.steps
    store_root = str(Store(settings.store_root).root)
    plan = plan_training_task(store_root, run_id, asdict(params))
    jobs = plan["jobs"]
    for s in plan["skipped"]:
        log.warning("Cluster %d skipped: %s", s["cluster"], s["reason"])
    log.info("Run %s: %d training job(s) (%s %s, %d steps per cluster, %d in total)", run_id, len(jobs),
             mode, model, steps, plan["total_steps"])
    progress = create_progress_artifact(0.0, key=artifact_key("train-progress", run_id),
                                        description=f"train {run_id}: models done / total ({len(jobs)})")
    with _gpu_context(settings.gpu_resource, log):
        # the shared start (and the baseline, the conditional GAN) at once; the clusters' fine-tuning after it
        others = [j for j in jobs if j["kind"] != "cluster"]
        futures = [train_cluster_task.with_options(name=f"train-{j['name']}").submit(plan, j) for j in others]
        shared = [f for f, j in zip(futures, others) if j["kind"] == "shared"]
        cluster_jobs = [j for j in jobs if j["kind"] == "cluster"]
        if cluster_jobs:
            futures += list(train_cluster_task.map(unmapped(plan), cluster_jobs, wait_for=shared))
    results = []
    for fut in as_completed(futures):
        r = fut.result()
        results.append(r)
        log.info("Trained %s: %d steps on %d images (resumed from %s)", r["name"], r["steps"], r["n_train"],
                 r["resumed_from"])
        update_progress_artifact(progress, 100.0 * len(results) / len(jobs),
                                 description=f"train {run_id}: {len(results)}/{len(jobs)} models done")
    deps = [asset_for("corpus", plan["corpus"])] + [partition_asset(run_id, k) for k in plan["trained_clusters"]]
    register_models_task.with_options(assets=[model_asset(run_id, r["name"]) for r in results],
                                      asset_deps=deps)(plan, results)
    summary = finish_training_task(plan, results)
    rows = [{"model": r["name"], "kind": r["model"], "cluster": r["cluster"], "images": r["n_train"],
             "steps": r["steps"], "resumed_from": r["resumed_from"],
             **{k: fig(v) for k, v in r["losses"].items()}, "seconds": fig(r["seconds"]),
             "parameters": r.get("n_params"), "images seen": r.get("images_seen"), "peak MB": r.get("peak_rss_mb"),
             "artifact": r["artifact_id"],
             "note": "from an earlier run" if r.get("from_earlier_run") else ""}
            for r in summary["models"]]
    rows += [{"model": f"cluster-{s['cluster']}", "kind": "skipped", "cluster": s["cluster"], "images": s["count"],
              "steps": 0, "note": s["reason"]} for s in plan["skipped"]]
    create_table_artifact(key=artifact_key("train", run_id), table=rows,
                          description=f"generators of run {run_id} ({mode}, {model}); skipped clusters listed")
    create_markdown_artifact(
        key=artifact_key("train-samples", run_id), description=f"sample grids of run {run_id}",
        markdown=f"# Generators of run `{run_id}`\n\nmodels folder: {file_link(fs.as_path(plan['run_dir']) / 'models')}\n\n"
                 + "\n".join(png_markdown(r["samples"], f"{r['name']}: step {r['steps']}")
                             for r in summary["models"] if r.get("samples"))
                 + "".join(f"\n- cluster {s['cluster']} skipped: {s['reason']}" for s in plan["skipped"]))
    return summary


@flow(name="cci-evaluate", log_prints=True, flow_run_name=naming.evaluate_name)
def evaluate_flow(settings: EvaluateSettings) -> dict:
    """Measure the generators of the run against its real images, side by side with the baseline."""
    log = get_run_logger()
    run_id = settings.run_id
    store_root = str(Store(settings.store_root).root)
    plan = plan_evaluation_task(store_root, run_id, asdict(settings.params))
    groups = plan["groups"]
    progress = create_progress_artifact(0.0, key=artifact_key("evaluate-progress", run_id),
                                        description=f"evaluate {run_id}: model groups measured / {len(groups)}")
    with _gpu_context(None, log):
        refs = prepare_references_task.submit(plan).result()
        futures = list(evaluate_group_task.map(unmapped(plan), unmapped(refs), groups))
    for name, s in refs["spaces"].items():
        log.info("Feature space %s: %s (%s)", name, s["note"], s["artifact_id"])
    results = []
    for fut in as_completed(futures):
        results.append(fut.result())
        update_progress_artifact(progress, 100.0 * len(results) / len(groups),
                                 description=f"evaluate {run_id}: {len(results)}/{len(groups)} groups measured")
    report_deps = [model_asset(run_id, m["name"]) for g in groups for m in g["models"]]
    summary = write_report_task.with_options(assets=[report_asset(run_id)], asset_deps=report_deps).submit(
        plan, refs, results).result()
    rows = []
    for space, comp in summary["comparison"].items():
        for metric, c in comp.items():
            rows.append({"features": space, "measure": metric, "better": c["better"],
                         **{g: fig(v) for g, v in c["values"].items()},
                         "winner": c["winner"]})
    if not rows:  # one group only: still show its figures
        for space, reps in summary["headline"].items():
            for g, r in reps.items():
                rows += [{"features": space, "measure": m, g: fig(r.get(m))} for m in HEADLINE if m in r]
    create_table_artifact(key=artifact_key("evaluate", run_id), table=rows,
                          description=f"generation measures of run {run_id}: who wins each measure")
    create_markdown_artifact(
        key=artifact_key("evaluate-report", run_id), description=f"generation report of run {run_id}",
        markdown=summary["markdown"] + f"\n\nreport: {file_link(summary['report'])} "
                                       f"(lineage `cci lineage show {summary['report_artifact_id']}`)\n\n"
                 + "\n".join(png_markdown(p, f"generated by {g}") for g, p in summary["grids"].items()))
    return summary
