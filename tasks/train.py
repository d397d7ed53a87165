"""Prefect tasks around :mod:`cci_core.generator_run`: dicts of paths and ids only.

Training tasks (and the reference-CNN task of the evaluation) are tagged ``gpu``; the
flow asks Dask for a ``GPU`` resource for them only when the workers advertise one.
"""
from __future__ import annotations

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.assets import materialize

from cci_core import generator_run as gr
from cci_core.lineage import LineageStore
from cci_core.store import Store
from tasks.common import annotate_asset, asset_for, producer


def model_asset(run_id: str, name: str):
    return asset_for("model", f"{run_id}/{name}")


def report_asset(run_id: str):
    return asset_for("report", f"{run_id}/generation")


@task(name="plan-training")
def plan_training_task(store_root: str, run_id: str, params: dict) -> dict:
    return gr.plan_training(Store(store_root), run_id, gr.TrainParams(**params))


def _progress_reporter(job: dict):
    """A train_generator progress callback updating a Prefect progress artifact every ~5%."""
    state = {"id": None, "last": -1.0}

    def report(step: int, total: int, losses: dict) -> None:
        pct = 100.0 * step / max(total, 1)
        if pct - state["last"] < 5.0 and step < total:
            return
        try:
            if state["id"] is None:
                state["id"] = create_progress_artifact(pct, description=f"training {job['name']}: step {step}/{total}")
            else:
                update_progress_artifact(state["id"], pct, description=f"training {job['name']}: step {step}/{total}")
        except Exception:  # progress display must never fail a training run
            pass
        state["last"] = pct
    return report


def worker_info() -> dict:
    """The Dask worker running this task and the resources it advertises (empty outside Dask)."""
    try:
        from distributed import get_worker
        w = get_worker()
        return {"worker": w.address, "worker_resources": dict(w.state.total_resources)}
    except Exception:
        return {}


@task(name="train-cluster", tags=["gpu"], retries=1, retry_delay_seconds=5)
def train_cluster_task(plan: dict, job: dict) -> dict:
    """Train (or resume) one generator: one cluster, the conditional GAN, or the baseline.
    A retry (or a later re-run) resumes from the job's last checkpoint."""
    result = gr.train_job(Store(plan["store"]), plan, job, producer=producer(), progress=_progress_reporter(job))
    return {**result, **worker_info()}


@materialize("cci://model/pending", name="register-models")
def register_models_task(plan: dict, results: list[dict]) -> list[str]:
    """Attach each model's lineage record to its Prefect asset (one asset per model)."""
    lin = LineageStore(Store(plan["store"]).lineage_url)
    for r in results:
        annotate_asset(model_asset(plan["run_id"], r["name"]), lin.get(r["artifact_id"]))
    return [r["artifact_id"] for r in results]


@task(name="finish-training")
def finish_training_task(plan: dict, results: list[dict]) -> dict:
    return gr.finish_training(Store(plan["store"]), plan, results)


@task(name="plan-evaluation")
def plan_evaluation_task(store_root: str, run_id: str, params: dict) -> dict:
    return gr.plan_evaluation(Store(store_root), run_id, gr.EvalParams(**params))


@task(name="prepare-references", tags=["gpu"])
def prepare_references_task(plan: dict) -> dict:
    return gr.prepare_references(Store(plan["store"]), plan, producer=producer())


@task(name="evaluate-models", tags=["gpu"])
def evaluate_group_task(plan: dict, refs: dict, group: dict) -> dict:
    return gr.evaluate_group(Store(plan["store"]), plan, refs, group)


@materialize("cci://report/pending", name="write-generation-report")
def write_report_task(plan: dict, refs: dict, results: list[dict]) -> dict:
    store = Store(plan["store"])
    summary = gr.write_report(store, plan, refs, results, producer=producer())
    annotate_asset(report_asset(plan["run_id"]), LineageStore(store.lineage_url).get(summary["report_artifact_id"]))
    return summary
