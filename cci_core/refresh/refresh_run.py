"""A corpus refresh against a finished (usually refined) run: what the scheduled refresh does.

After new images are ingested into the run's corpus (a new corpus version), :func:`assign_new`
labels only the new rows with the run's predictor (its CCI classifier, or its centres) and
makes a new run ``<run>-refresh-v<corpus version>`` whose clustering is the old labels plus the new
ones, with fresh partitions and a drift report. :func:`retrain_changed` then trains only the
clusters whose partition grew by more than a threshold and carries the others' models over;
the caller publishes a new dataset version from the new run.

Drift report (``reports/drift.json``):
    n_new               new images
    low_confidence      share of new images whose confidence is below ``low_confidence``
                        (far from every centre / no cluster the classifier is sure of)
    growth              per cluster: new images / images it had
    size_shift          total-variation distance between the old and new cluster proportions
    changed_clusters    clusters whose growth exceeds ``retrain_threshold``
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from cci_core.cluster import cluster_run
from cci_core.cluster.labels import read_labels, write_labels
from cci_core.predict.predict import load_predictor
from cci_core.refresh.records import RefreshPlan
from cci_core.store import fs, relpaths, runs
from cci_core.store.corpus import open_corpus
from cci_core.store.store import Store, atomic_write_json, hash_files, utc_now


def assign_new(store: Store, run_id: str, version: int | None = None, retrain_threshold: float = 0.1,
               low_confidence: float = 0.5, producer: dict | None = None) -> dict:
    """Label the corpus rows added since RUN's corpus version; write the new run and its drift.

    Returns the drift report plus ``run_id`` (the new run) — or ``{"changed": False}`` when
    the corpus has no rows beyond the run's.
    """
    parent = runs.finished_run(store, run_id)
    c = open_corpus(store, parent["corpus"], version)
    old_n, new_n = parent["n_rows"], c.n_rows
    if new_n <= old_n:
        return {"changed": False, "run_id": run_id, "corpus_version": c.version, "n_new": 0}
    root = parent.get("refresh_root", run_id)
    new_id = f"{root}-refresh-v{c.version}"
    predict = load_predictor(store, run_id)
    labels, conf = [], []
    images = c.images()
    for start in range(old_n, new_n, 8192):
        lab, cf = predict(images[start:min(new_n, start + 8192)])
        labels.append(lab)
        conf.append(cf)
    new_labels, new_conf = np.concatenate(labels), np.concatenate(conf)
    old_labels = read_labels(parent["run_dir"])
    k = len(parent["partitions"])
    old_sizes = np.bincount(old_labels[old_labels >= 0], minlength=k)
    added = np.bincount(new_labels[new_labels >= 0], minlength=k)
    growth = added / np.maximum(old_sizes, 1)
    new_sizes = old_sizes + added
    shift = 0.5 * float(np.abs(old_sizes / old_sizes.sum() - new_sizes / new_sizes.sum()).sum())
    changed = [int(i) for i in np.flatnonzero(growth > retrain_threshold)]

    rdir = store.run_dir(new_id)
    if runs.run_file(store, new_id).exists() and runs.read_run(store, new_id).get("status") == "complete":
        raise ValueError(f"run {new_id!r} already holds corpus {c.name!r} v{c.version}; nothing to refresh")
    plan = RefreshPlan.from_parent(parent, run_id=new_id, store=str(store.root), run_dir=str(rdir),
                                   corpus_version=c.version, corpus_artifact_id=c.artifact_id, n_rows=new_n,
                                   refreshed_from=run_id, refresh_root=root, status="running", created_at=utc_now())
    rdir.mkdir(parents=True, exist_ok=True)
    for sub in ("pca",):  # what predict needs besides the classifier: shared, read-only, copied once
        if (store.run_dir(run_id) / sub).exists() and not (rdir / sub).exists():
            fs.copytree(store.run_dir(run_id) / sub, rdir / sub)
    if not parent.get("classifier"):
        fs.copytree(store.run_dir(run_id) / "clustering", rdir / "clustering", dirs_exist_ok=True)
    runs.write_run(store, new_id, plan.to_json())

    all_labels = np.concatenate([old_labels, new_labels]).astype(np.int32)
    lab_path = write_labels(rdir / "clustering", c, all_labels)
    drift = {"run_id": new_id, "refreshed_from": run_id, "corpus_version": c.version, "changed": True,
             "n_new": int(new_n - old_n), "low_confidence_threshold": low_confidence,
             "low_confidence": float((new_conf < low_confidence).mean()),
             "mean_confidence": float(new_conf.mean()), "method": predict.method,
             "growth": {str(i): float(g) for i, g in enumerate(growth)},
             "added": {str(i): int(a) for i, a in enumerate(added)}, "size_shift": shift,
             "retrain_threshold": retrain_threshold, "changed_clusters": changed}
    atomic_write_json(rdir / "reports" / "drift.json", drift)

    lin = runs.lineage_store(store)
    inputs = [(parent["clustering"]["clustering_artifact_id"], "previous_clustering"),
              (c.artifact_id, "corpus")]
    if parent.get("classifier_artifact_id"):
        inputs.append((parent["classifier_artifact_id"], "classifier"))
    art = lin.record("clustering", f"{new_id}/clustering", str(rdir / "clustering"),
                     hash_files([lab_path]), size=lab_path.stat().st_size,
                     params={"refreshed_from": run_id, "corpus_version": c.version, "method": predict.method},
                     metrics={"n_new": drift["n_new"], "low_confidence": drift["low_confidence"],
                              "size_shift": shift}, producer=producer, inputs=inputs)
    cl = {**parent["clustering"], "clustering_artifact_id": art.id, "sizes": new_sizes.tolist(),
          "report": str(rdir / "reports" / "drift.json")}
    runs.update_run(store, new_id, clustering=cl, drift=drift)
    extra = [(parent["classifier_artifact_id"], "classifier")] if parent.get("classifier_artifact_id") else []
    cluster_run.write_partitions(store, runs.read_run(store, new_id), cl, extra, producer=producer)
    runs.finish_run(store, runs.read_run(store, new_id))
    return drift


def _carry_shared_start(store: Store, previous: str, target) -> None:
    """Copy the previous run's trained shared start into ``target`` (once), the start the refreshed
    run's changed clusters are fine-tuned from; its model record, and so its lineage id, come along."""
    source = store.run_dir(previous) / "models" / "shared-start"
    if not (source / "model.json").exists():
        raise ValueError(f"run {previous!r} has no trained shared start ({source}); retrain it with "
                         f"`cci train {previous}` first, or train the refreshed run with --shared-start 0")
    if not (fs.as_path(target) / "model.json").exists():
        fs.copytree(source, target)


def retrain_changed(store: Store, run_id: str, changed: list[int], params=None, producer: dict | None = None) -> dict:
    """Train generators of the refreshed RUN for the ``changed`` clusters only; every other
    cluster keeps the model of the run it was refreshed from (same artifact, same folder).

    Returns the training summary (``models/training.json``) with ``retrained`` and ``carried_over``.
    """
    from cci_core.generate.records import TrainJob
    from cci_core.generate.settings import TrainParams, train_params_fields
    from cci_core.generate.training_run import finish_training, make_training_plan, train_job
    run = runs.finished_run(store, run_id)
    previous = run.get("refreshed_from")
    prev_path = store.run_dir(previous) / "models" / "training.json" if previous else None
    if not prev_path or not prev_path.exists():
        raise ValueError(f"run {run_id!r} is not a refresh of a run with trained generators")
    prev = relpaths.read_record(store.root, prev_path)
    # models trained before shared starts existed were trained from scratch
    params = params or TrainParams(**{"shared_start": 0.0, **{k: v for k, v in prev["params"].items()
                                                              if k in train_params_fields()}})
    params.baseline = False
    plan = make_training_plan(store, run_id, params)
    kept = {m["cluster"]: m for m in prev["models"] if m["kind"] == "cluster"}
    jobs = [j for j in plan.jobs if j.kind == "cluster" and (j.cluster in changed or j.cluster not in kept)]
    shared = plan.shared_job()
    if shared is not None and jobs:  # the changed clusters are fine-tuned from the run's own shared start
        _carry_shared_start(store, previous, plan.out_dir(shared))
    results = [train_job(store, plan, job, producer=producer) for job in jobs]
    trained = {r["cluster"] for r in results}
    carried = [{**m, "from_earlier_run": previous} for c, m in sorted(kept.items()) if c not in trained]
    # the report lists the carried-over models after the retrained ones (a job known by its name only)
    summary = finish_training(store, replace(plan, jobs=(*jobs, *(TrainJob(m["name"]) for m in carried))),
                              results + carried)
    summary.update(retrained=sorted(trained), carried_over=[m["cluster"] for m in carried])
    return summary

