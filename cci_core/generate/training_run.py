"""Training the generators of a finished clustering run: the steps behind ``cci train``.

Like :mod:`cci_core.cluster.cluster_run`, each step reads what the step before it wrote in
``runs/<run-id>/``, writes its own files, records lineage, and returns a small JSON-ready
dict (paths and ids, never arrays)::

    plan = make_training_plan(store, run_id, TrainParams(steps=2000))  # checks only, writes nothing
    results = [train_job(store, plan, job) for job in plan.jobs]       # one job per cluster (+ baseline)
    summary = finish_training(store, plan, results)                    # models/training.json

(:func:`train_local` does all of them in this process; :mod:`cci_core.generate.evaluation_run` measures
what the models make.) The plan is a :class:`~cci_core.generate.records.TrainingPlan`, passed between the
steps as its JSON dict (``plan_training``).

Run folder, added to the clustering run's::

    runs/<run-id>/models/cluster-<k>/      one generator per cluster (train_generator's out_dir:
                                           checkpoints/, samples/, generator.*, loss.png) + model.json
                 models/conditional/        the one cluster-conditional GAN (--mode conditional)
                 models/baseline/           one unconditional GAN on the whole corpus, same total steps
                 models/training.json       the trained models (the last `cci train`'s, plus earlier
                                            ones it did not touch) and the skipped clusters
                 reports/explore.html       the cluster explorer, rebuilt with real vs generated images

Step budget: ``steps`` (and ``seconds``) are per cluster; the conditional GAN and the
unconditional baseline get ``steps`` times the number of trained clusters, the same total.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cci_core.cluster.cluster_run import partition_rows
from cci_core.common.memory import PeakRSS
from cci_core.common.shapes import MODEL_SIZES
from cci_core.generate.model_dir import last_sample, latest_checkpoint_info
from cci_core.generate.records import (
    ModelRecord,
    SkippedCluster,
    TrainingPlan,
    TrainJob,
    as_plan,
    model_lineage_params,
    model_metrics,
    read_training,
)
from cci_core.generate.settings import TrainParams
from cci_core.store import fs, relpaths
from cci_core.store.corpus import open_corpus
from cci_core.store.runs import finished_run, lineage_store, update_run
from cci_core.store.store import Store, hash_files, utc_now

SHARED_START = "shared-start"  # the job (and models/ folder) every cluster's model is fine-tuned from


def _job(job) -> TrainJob:
    return TrainJob.from_json(job) if isinstance(job, Mapping) else job


def model_config(plan, job):
    """The model configuration of one training job: a GANConfig or a VAEConfig."""
    return as_plan(TrainingPlan, plan).model_config(_job(job))


def train_config(plan, job):
    """The :class:`~cci_core.generate.training_loop.TrainConfig` of one training job."""
    return as_plan(TrainingPlan, plan).train_config(_job(job))


def _check_existing(plan: TrainingPlan, job: TrainJob) -> None:
    """Refuse to train over a model of another kind or shape (nothing is overwritten)."""
    out_dir = plan.out_dir(job)
    info = latest_checkpoint_info(out_dir)
    if info is None:
        return
    cfg, tcfg = plan.model_config(job), plan.train_config(job)
    want = {"kind": "vae" if type(cfg).__name__ == "VAEConfig" else "gan", "model": asdict(cfg),
            "ema_decay": tcfg.ema_decay}
    have = {"kind": info.get("kind"), "model": info.get("model"),
            "ema_decay": (info.get("train") or {}).get("ema_decay")}
    diff = [k for k in want if want[k] != have[k]]
    if diff:
        raise ValueError(f"{out_dir} already holds a {have['kind']} trained with other settings "
                         f"({', '.join(diff)} differ: {have[diff[0]]} vs {want[diff[0]]}); "
                         "train with the original settings to resume it, or move it away first "
                         "(nothing was overwritten)")


def check_model_shape(run_id: str, shape) -> None:
    """Refuse a run whose images the generators cannot make (square, 28/32/64 pixels, 1 or 3 channels)."""
    h, w, c = shape
    if h != w or h not in MODEL_SIZES or c not in (1, 3):
        raise ValueError(f"run {run_id!r} clustered {h}x{w}x{c} images; the generators make square "
                         f"{', '.join(map(str, MODEL_SIZES))}-pixel images with 1 or 3 channels: re-ingest the "
                         f"corpus with --size {MODEL_SIZES[0]}x{MODEL_SIZES[0]} (or 32x32, 64x64) and cluster it again")


def make_training_plan(store: Store, run_id: str, params: TrainParams) -> TrainingPlan:
    """The typed plan of :func:`plan_training`."""
    params.validate()
    run = finished_run(store, run_id)
    check_model_shape(run_id, run["shape"])
    eligible, skipped = [], []
    for part in run["partitions"]:
        if part["count"] >= params.min_size:
            eligible.append(part)
        else:
            skipped.append(SkippedCluster(part["cluster"], part["count"],
                                          f"{part['count']} images, fewer than --min-size {params.min_size}"))
    if not eligible:
        largest = max(p["count"] for p in run["partitions"])
        raise ValueError(f"every cluster of run {run_id!r} is smaller than --min-size {params.min_size} "
                         f"(the largest has {largest} images); lower --min-size")
    n = len(eligible)
    scaled = None if params.seconds is None else params.seconds * n
    jobs = []

    def pooled(name: str, kind: str, steps: int, seconds: float | None) -> TrainJob:
        return TrainJob(name, kind, clusters=tuple(p["cluster"] for p in eligible), count=sum(p["count"] for p in eligible),
                        partition_artifact_ids=tuple(p["artifact_id"] for p in eligible), steps=steps, seconds=seconds)

    if params.mode == "per-cluster":
        shared, each = params.split_budget(n)
        if shared:  # the shared start's steps count in the per-cluster total
            jobs.append(pooled(SHARED_START, "shared", shared, None if scaled is None else scaled * params.shared_start))
        each_seconds = None if params.seconds is None else params.seconds * (1 - params.shared_start * bool(shared))
        jobs += [TrainJob(f"cluster-{p['cluster']}", "cluster", cluster=p["cluster"], count=p["count"],
                          partition_artifact_id=p["artifact_id"], steps=each, seconds=each_seconds)
                 for p in eligible]
    else:
        jobs.append(pooled("conditional", "conditional", params.steps * n, scaled))
    if params.baseline:
        jobs.append(TrainJob("baseline", "baseline", count=run["n_rows"], steps=params.steps * n, seconds=scaled))
    plan = TrainingPlan(
        run_id=run_id, store=str(store.root), run_dir=str(store.run_dir(run_id)), corpus=run["corpus"],
        corpus_version=run["corpus_version"], corpus_artifact_id=run["corpus_artifact_id"],
        clustering_artifact_id=run["clustering"]["clustering_artifact_id"], n_rows=run["n_rows"],
        shape=tuple(run["shape"]), n_clusters=len(run["partitions"]), params=TrainParams(**asdict(params)),
        jobs=tuple(jobs), skipped=tuple(skipped), trained_clusters=tuple(p["cluster"] for p in eligible),
        total_steps=params.steps * n)
    for job in plan.jobs:
        _check_existing(plan, job)
    return plan


def plan_training(store: Store, run_id: str, params: TrainParams) -> dict:
    """Check a training request and list its jobs; writes nothing. Returns the plan's JSON dict.

    Raises one clear error for an unknown run, a run with no finished clustering, image
    sizes the generators do not support, bad parameters, every cluster below ``min_size``,
    or models already trained in the run with other settings.
    """
    return make_training_plan(store, run_id, params).to_json()


def record_model(store: Store, run_id: str, name: str, out_dir: Path, params: dict, metrics: dict,
                 producer: dict | None, inputs: list) -> Any:
    """Record a trained generator (its ``generator.{safetensors,json}``) as a ``model`` artifact."""
    gen = out_dir / "generator.safetensors"
    files = [gen, gen.with_suffix(".json")]
    return lineage_store(store).record(
        "model", f"{run_id}/models/{name}", str(out_dir), hash_files(files),
        size=sum(f.stat().st_size for f in files), params=params, metrics=metrics, producer=producer, inputs=inputs)


def train_job(store: Store, plan: TrainingPlan | dict, job: TrainJob | dict, producer: dict | None = None,
              progress: Callable[[int, int, dict], None] | None = None) -> dict:
    """Train (or resume) one generator of the plan and record it as a ``model`` artifact.

    A cluster job reads only its partition's rows from the corpus Zarr (starting, when the plan has one,
    from the shared start, which must be trained first); the conditional job and a GAN's shared start
    read the rows of every trained cluster with their cluster ids (a VAE's shared start: the rows
    alone); the baseline reads the whole corpus. Returns the job's model record (also
    ``models/<name>/model.json``), with the generator's parameters, the images it saw and the task's
    peak resident memory.
    """
    from cci_core.generate.training_loop import train_generator
    plan, job = as_plan(TrainingPlan, plan), _job(job)
    run_id = plan.run_id
    corpus = open_corpus(store, plan.corpus, plan.corpus_version)
    out_dir = plan.out_dir(job)
    cfg, tcfg = plan.model_config(job), plan.train_config(job)
    rows = labels = None
    inputs = [(plan.corpus_artifact_id, "corpus")]
    if job.kind == "cluster":
        rows = partition_rows(store, run_id, job.cluster)
        inputs.append((job.partition_artifact_id, "partition"))
        if tcfg.init_from:
            inputs.append((_shared_start_id(store, fs.as_path(tcfg.init_from)), "model"))
    elif job.kind in ("conditional", "shared"):
        parts = [partition_rows(store, run_id, k) for k in job.clusters]
        rows = np.concatenate(parts)
        if getattr(cfg, "n_classes", 0):
            labels = np.concatenate([np.full(len(r), k, np.int64) for r, k in zip(parts, job.clusters)])
        inputs += [(aid, "partition") for aid in job.partition_artifact_ids]
    t0 = time.perf_counter()
    with PeakRSS() as peak:
        res = train_generator(corpus.images(), out_dir, cfg, tcfg, rows=rows, n_rows=corpus.n_rows,
                              labels=labels, progress=progress)
    wall = time.perf_counter() - t0
    losses = {k: float(v) for k, v in res["losses"].items()}
    params = model_lineage_params(
        asdict(plan.params), run_id=run_id, corpus=plan.corpus, corpus_version=plan.corpus_version, job=job.name,
        job_kind=job.kind, cluster=job.cluster, clusters=None if job.clusters is None else list(job.clusters),
        step_budget=job.steps, seconds_budget=job.seconds, model_config=asdict(cfg),
        # the start by its job name (its lineage id is an input): the same request in another store has the same id
        train_config={**asdict(tcfg), "init_from": SHARED_START if tcfg.init_from else None})
    art = record_model(store, run_id, job.name, out_dir, params,
                       model_metrics(res["steps"], res["n_train"], losses, res["seconds"]), producer, inputs)
    record = ModelRecord.build(
        name=job.name, kind=job.kind, model=res["kind"], out_dir=out_dir, cluster=job.cluster, clusters=job.clusters,
        n_train=res["n_train"], steps=res["steps"], step_budget=job.steps, seconds=round(res["seconds"], 3),
        wall_seconds=round(wall, 3), resumed_from=res["resumed_from"], losses=losses, artifact_id=art.id,
        samples=str(res["samples"][-1]) if res["samples"] else last_sample(out_dir),
        loss_curve=str(res["loss_curve"]) if res["loss_curve"] else None,
        device=str(tcfg.device or _device_name()), n_params=res["n_params"], images_seen=res["steps"] * tcfg.batch_size,
        peak_rss_mb=round(peak.mb, 1))
    summary = record.to_json()
    relpaths.write_record(store.root, out_dir / "model.json", summary)
    return summary


def _shared_start_id(store: Store, shared_dir: Path) -> str:
    """The lineage id of the trained shared start in ``shared_dir`` (its ``model.json``)."""
    path = shared_dir / "model.json"
    if not path.exists():
        raise ValueError(f"the shared start {shared_dir} is not trained yet: its job runs before the clusters' "
                         f"(run `cci train` again to train it first)")
    return relpaths.read_record(store.root, path)["artifact_id"]


def _device_name() -> str:
    from cci_core.common.device import pick_device
    return str(pick_device(None))


def write_training_report(store: Store, *, run_id: str, run_dir: str, corpus: str, corpus_version: int,
                          params: dict, mode: str, model: str, trained_clusters: list, skipped: list,
                          total_steps: int, models: list[dict]) -> dict:
    """Write ``models/training.json`` (what evaluate and generate read) and point run.json at it."""
    path = fs.as_path(run_dir) / "models" / "training.json"
    summary = {"run_id": run_id, "run_dir": run_dir, "corpus": corpus, "corpus_version": corpus_version,
               "params": params, "mode": mode, "model": model, "trained_clusters": trained_clusters,
               "skipped": skipped, "total_steps": total_steps, "models": models,
               "model_artifact_ids": {r["name"]: r["artifact_id"] for r in models},
               "training_report": str(path), "finished_at": utc_now()}
    relpaths.write_record(store.root, path, summary)
    update_run(store, run_id, training={"report": str(path), "mode": mode, "model": model,
                                        "model_artifact_ids": summary["model_artifact_ids"],
                                        "finished_at": summary["finished_at"]})
    return summary


def finish_training(store: Store, plan: TrainingPlan | dict, results: list[dict]) -> dict:
    """Write ``models/training.json`` and point run.json at it, and rebuild the run's cluster explorer
    (``reports/explore.html``) when it has per-cluster generators; returns the summary.

    ``results`` are :func:`train_job`'s model records (with whatever the task added), in any order."""
    plan = as_plan(TrainingPlan, plan)
    order = {j.name: i for i, j in enumerate(plan.jobs)}
    results = sorted(results, key=lambda r: order.get(r["name"], len(order)))
    path = fs.as_path(plan.run_dir) / "models" / "training.json"
    # models an earlier `cci train` made and this one did not touch (e.g. the baseline after a
    # re-run with --no-baseline, or per-cluster models beside a later conditional GAN) stay listed
    kept = []
    if path.exists():
        names = {r["name"] for r in results}
        kept = [{**m, "from_earlier_run": True} for m in read_training(store, path).get("models") or []
                if m["name"] not in names and (fs.as_path(m["dir"]) / "generator.safetensors").exists()]
    params = asdict(plan.params)
    summary = write_training_report(
        store, run_id=plan.run_id, run_dir=plan.run_dir, corpus=plan.corpus, corpus_version=plan.corpus_version,
        params=params, mode=plan.params.mode, model=plan.params.model, trained_clusters=list(plan.trained_clusters),
        skipped=[s.to_json() for s in plan.skipped], total_steps=plan.total_steps, models=results + kept)
    if any(m["kind"] == "cluster" for m in summary["models"]):
        from cci_core.generate.explore_generated import rebuild_explorer
        rebuild_explorer(store, plan.run_id)  # reports/explore.html: real vs generated, "not evaluated" yet
    return summary


def train_local(store: Store, run_id: str, params: TrainParams) -> dict:
    """Every training job in this process, in order (what the train flow does on Dask)."""
    plan = make_training_plan(store, run_id, params)
    return finish_training(store, plan, [train_job(store, plan, job) for job in plan.jobs])
