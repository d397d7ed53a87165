"""The refine flow: train the CCI classifier on a clustering run and publish the refined
clustering as a new run (partitions, per-round metrics, curves, montages)."""
from __future__ import annotations

from dataclasses import asdict

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from cci_core.cluster.explore import explorer_path
from cci_core.store import fs
from cci_core.store.store import Store
from flows import naming
from flows.common import artifact_key, fig_row, file_link, metrics_text, png_markdown
from flows.runtime import gpu_annotation
from flows.settings import RefineSettings
from tasks.cluster import finish_run_task
from tasks.common import asset_for
from tasks.refine import refine_pictures_task, refine_task, refined_partitions_task, start_refine_task

ROUND_KEYS = ("round", "acc", "nmi", "ari", "silhouette", "selection_score", "inertia", "trusted", "changed",
              "train_images_per_s", "wall_seconds")


@flow(name="cci-refine", log_prints=True, flow_run_name=naming.refine_name)
def refine_flow(settings: RefineSettings) -> dict:
    """Refine the clustering of the settings' run with the CCI classifier into a new run."""
    log = get_run_logger()
    run_id = settings.run_id
    store_root = str(Store(settings.store_root).root)
    plan = start_refine_task(store_root, run_id, asdict(settings.config), settings.new_run_id)
    log.info("Refining run %s (corpus %s v%d, %d images) into run %s", run_id, plan["corpus"],
             plan["corpus_version"], plan["n_rows"], plan["run_id"])
    assets = [asset_for("classifier", plan["run_id"]), asset_for("clustering", plan["run_id"])]
    with gpu_annotation() as on_gpu:
        upstream = [asset_for("clustering", run_id), asset_for("corpus", plan["corpus"])]
        cl = refine_task.with_options(assets=assets, asset_deps=upstream).submit(plan).result()
    log.info("Chose round %d of %d%s", cl["chosen_round"], len(cl["rounds"]) - 1,
             " (on a GPU worker)" if on_gpu else "")
    parts_future = refined_partitions_task.submit(plan, cl)
    pictures = refine_pictures_task.submit(plan, cl).result()
    parts = parts_future.result()
    run = finish_run_task(plan)

    create_table_artifact(key=artifact_key("refine-rounds", plan["corpus"]),
                          table=[fig_row({k: r.get(k) for k in ROUND_KEYS if k in r}) for r in cl["rounds"]],
                          description=f"CCI refinement of run {run_id}, round by round "
                                      f"(kept round {cl['chosen_round']})")
    shown = [p for p in pictures if p.endswith(("clusters.png", "curves.png"))]
    create_markdown_artifact(key=artifact_key("refine-pictures", plan["corpus"]),
                             description=f"pictures of refined run {plan['run_id']}",
                             markdown=f"# Refined run `{plan['run_id']}`\n\nfrom run `{run_id}`; "
                                      f"{metrics_text(cl['metrics'])}\n\nfolder {file_link(plan['run_dir'])}, "
                                      f"partitions {file_link(fs.as_path(plan['run_dir']) / 'partitions')}, cluster explorer "
                                      f"{file_link(explorer_path(plan['run_dir']), 'explore.html')}; lineage: "
                                      f"`cci lineage show {cl['clustering_artifact_id']}`\n\n"
                                      + "\n".join(png_markdown(p, fs.as_path(p).stem) for p in shown))
    return {"run_id": plan["run_id"], "parent_run": run_id, "run_dir": plan["run_dir"], "corpus": plan["corpus"],
            "corpus_version": plan["corpus_version"], "n_rows": plan["n_rows"], "status": run["status"],
            "classifier": run["classifier"], "classifier_artifact_id": cl["classifier_artifact_id"],
            "clustering_artifact_id": cl["clustering_artifact_id"], "chosen_round": cl["chosen_round"],
            "rounds": cl["rounds"], "metrics": cl["metrics"], "changed_from_parent": cl["changed_from_parent"],
            "partitions": parts, "pictures": pictures, "report": cl["report"], "gpu_resource": on_gpu,
            "device": cl.get("device"), "threads": cl.get("threads")}
