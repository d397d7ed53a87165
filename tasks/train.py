"""Prefect tasks around :mod:`cci_core.generate.training_run` and :mod:`cci_core.generate.evaluation_run`:
dicts of paths and ids only.

Training tasks (and the reference-CNN task of the evaluation) are tagged ``gpu``; the
flow asks Dask for a ``GPU`` resource for them only when the workers advertise one.
"""
from __future__ import annotations

from prefect import task
from prefect.assets import materialize

from cci_core.generate import eval_references, evaluation_run, settings, training_run
from cci_core.store.lineage import LineageStore
from cci_core.store.store import Store
from tasks.common import annotate_asset, asset_for, producer, progress_artifact, torch_compute


def model_asset(run_id: str, name: str):
    return asset_for("model", f"{run_id}/{name}")


def report_asset(run_id: str):
    return asset_for("report", f"{run_id}/generation")


@task(name="plan-training", task_run_name="plan training {run_id}")
def plan_training_task(store_root: str, run_id: str, params: dict) -> dict:
    return training_run.plan_training(Store(store_root), run_id, settings.TrainParams(**params))


def _progress_reporter(job: dict):
    """A train_generator progress callback (step, total, losses) on a Prefect progress artifact."""
    progress = progress_artifact(f"training {job['name']}")
    return lambda step, total, losses: progress(step, total, f"step {step}/{total}")


def worker_info() -> dict:
    """The Dask worker running this task and the resources it advertises (empty outside Dask)."""
    try:
        from distributed import get_worker
        w = get_worker()
        return {"worker": w.address, "worker_resources": dict(w.state.total_resources)}
    except Exception:
        return {}


@task(name="train-cluster", tags=["gpu"], retries=1, retry_delay_seconds=5, task_run_name="train {job[name]}")
def train_cluster_task(plan: dict, job: dict) -> dict:
    """Train (or resume) one generator: one cluster, the conditional GAN, or the baseline.
    A retry (or a later re-run) resumes from the job's last checkpoint."""
    with torch_compute(None) as threads:  # the worker's threads, and memory kept between batches
        result = training_run.train_job(Store(plan["store"]), plan, job, producer=producer(),
                                        progress=_progress_reporter(job))
    return {**result, **worker_info(), "threads": threads}


@materialize("cci://model/pending", name="register-models", task_run_name="register models {plan[run_id]}")
def register_models_task(plan: dict, results: list[dict]) -> list[str]:
    """Attach each model's lineage record to its Prefect asset (one asset per model)."""
    lin = LineageStore(Store(plan["store"]).lineage_url)
    for r in results:
        annotate_asset(model_asset(plan["run_id"], r["name"]), lin.get(r["artifact_id"]))
    return [r["artifact_id"] for r in results]


@task(name="finish-training", task_run_name="finish training {plan[run_id]}")
def finish_training_task(plan: dict, results: list[dict]) -> dict:
    return training_run.finish_training(Store(plan["store"]), plan, results)


@task(name="plan-evaluation", task_run_name="plan evaluation {run_id}")
def plan_evaluation_task(store_root: str, run_id: str, params: dict) -> dict:
    return evaluation_run.plan_evaluation(Store(store_root), run_id, settings.EvalParams(**params))


@task(name="prepare-references", tags=["gpu"], task_run_name="references {plan[run_id]}")
def prepare_references_task(plan: dict) -> dict:
    with torch_compute(None):
        return eval_references.prepare_references(Store(plan["store"]), plan, producer=producer())


@task(name="evaluate-models", tags=["gpu"], task_run_name="evaluate {group[group]}")
def evaluate_group_task(plan: dict, refs: dict, group: dict) -> dict:
    with torch_compute(None):
        return evaluation_run.evaluate_group(Store(plan["store"]), plan, refs, group)


@materialize("cci://report/pending", name="write-generation-report", task_run_name="report {plan[run_id]}")
def write_report_task(plan: dict, refs: dict, results: list[dict]) -> dict:
    store = Store(plan["store"])
    summary = evaluation_run.write_report(store, plan, refs, results, producer=producer())
    annotate_asset(report_asset(plan["run_id"]), LineageStore(store.lineage_url).get(summary["report_artifact_id"]))
    return summary
