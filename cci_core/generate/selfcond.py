"""The self-conditioned GAN (Liu et al., CVPR 2020) on top of the cluster-conditional GAN.

The conditions are not fixed: they are k-means clusters of the discriminator's own
penultimate features ``D.features(x)`` over the corpus, found again every
``recluster_every`` steps. Each re-clustering starts from the previous centres (the means,
in the *new* feature space, of the previous clusters) and runs k-means passes with the
project's distributed assignment (:class:`cci_core.cluster.kmeans.MiniBatchKMeans.predict` over a
Dask array); the new ids are then matched to the old ones (Hungarian,
:func:`cci_core.cluster.cluster_metrics.match_labels`), so a condition keeps its meaning and the
class embeddings of G and D stay attached to the same images.

Like ``cci refine``, the result is a NEW run laid out like a clustering run, so everything
that reads runs (train, evaluate, generate, publish) works on it unchanged::

    runs/<new-id>/run.json                   kind "self-conditioned", parent_run, params, status
                 models/conditional/          the GAN (train_generator's out_dir) + model.json
                 models/training.json         one model of kind "conditional" (what generate reads)
                 selfcond/labels-step-NNNNNNN.npy   the conditions of every phase (resume point)
                 selfcond/history.json        per re-clustering: changed share, sizes, acc/nmi/ari
                 clustering/labels.parquet    the final conditions of every corpus row
                 clustering/centres.npy       their centres in the final discriminator's features
                 reports/metrics.json         final clustering metrics (+ the history)
                 reports/explore.html         the cluster explorer, mapped in the parent's clustering space
                 partitions/cluster-NNN.parquet

Steps: :func:`start_selfcond` → :func:`train_selfcond` → :func:`cluster_run.write_partitions`
→ :func:`finish_selfcond`; :func:`selfcond_local` runs them all in this process. The re-clustering
itself is in :mod:`cci_core.generate.selfcond_clusters`.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

import numpy as np
import pandas as pd

from cci_core.cluster import cluster_run
from cci_core.cluster.cluster_metrics import match_labels
from cci_core.cluster.labels import write_labels
from cci_core.common.shapes import MODEL_SIZES
from cci_core.generate.model_dir import last_sample
from cci_core.generate.records import ModelRecord, model_lineage_params, model_metrics
from cci_core.generate.selfcond_clusters import (
    cluster_means,
    discriminator_features,
    initial_clusters,
    kmeans_from,
    label_scores,
    recluster,
)
from cci_core.generate.settings import SelfCondParams
from cci_core.generate.training_run import record_model, write_training_report
from cci_core.store import fs, relpaths, runs
from cci_core.store.corpus import open_corpus
from cci_core.store.store import Store, atomic_write_json, derived_name, hash_files, read_json


def params_fields() -> set[str]:
    return {f.name for f in fields(SelfCondParams)}


# ----------------------------------------------------------------------------- the run

@dataclass(frozen=True)
class SelfCondPlan:
    """The new run's record as :func:`start_selfcond` writes it (its run.json): what training reads.

    ``other`` keeps the record's remaining keys (status, writer, ...), so :meth:`to_json` gives the dict back.
    """
    run_id: str
    run_dir: str
    corpus: str
    corpus_version: int
    corpus_artifact_id: str
    n_rows: int
    shape: tuple[int, int, int]
    parent_run: str
    parent_clustering_artifact_id: str
    k: int
    params: SelfCondParams
    other: Mapping[str, Any] = field(default_factory=dict)

    _KEYS = ("run_id", "run_dir", "corpus", "corpus_version", "corpus_artifact_id", "n_rows", "shape", "parent_run",
             "parent_clustering_artifact_id", "k", "params")

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SelfCondPlan:
        known = {key: d[key] for key in cls._KEYS}
        known.update(shape=tuple(d["shape"]), params=SelfCondParams(**d["params"]))
        return cls(**known, other={key: v for key, v in d.items() if key not in cls._KEYS})

    def to_json(self) -> dict[str, Any]:
        out = {key: getattr(self, key) for key in self._KEYS}
        out.update(shape=list(self.shape), params=asdict(self.params))
        return {**out, **self.other}

    @property
    def gan_config(self):
        return self.params.gan_config(self.shape, self.k)


def _plan(plan) -> SelfCondPlan:
    return SelfCondPlan.from_json(plan) if isinstance(plan, Mapping) else plan


def check_selfcond(store: Store, run_id: str, params: SelfCondParams, new_run_id: str | None = None) -> dict:
    """Everything checkable before training; returns the parent run.json."""
    params.validate()
    parent = runs.finished_run(store, run_id)
    h, w, c = parent["shape"]
    if h != w or h not in MODEL_SIZES or c not in (1, 3):
        raise ValueError(f"run {run_id!r} clustered {h}x{w}x{c} images; the GAN makes square "
                         f"{', '.join(map(str, MODEL_SIZES))}-pixel images with 1 or 3 channels: re-ingest the corpus "
                         "with --size 28x28 and cluster it again")
    k = params.k or len(parent["partitions"])
    if k > parent["n_rows"]:
        raise ValueError(f"--k {k} is more than the corpus's {parent['n_rows']} images")
    if params.batch_size > parent["n_rows"]:
        raise ValueError(f"--batch-size {params.batch_size} is more than the corpus's {parent['n_rows']} images")
    runs.check_new_run_id(store, new_run_id or derived_name(run_id, "selfcond", "run id", "--run-id"))
    return parent


def start_selfcond(store: Store, run_id: str, params: SelfCondParams, new_run_id: str | None = None) -> dict:
    """Create (or reopen, when unfinished with the same params) the new run's folder and run.json."""
    parent = check_selfcond(store, run_id, params, new_run_id)
    return runs.start_derived_run(store, parent, new_run_id or derived_name(run_id, "selfcond", "run id", "--run-id"),
                                  "self-conditioned",
                                  asdict(params), k=params.k or len(parent["partitions"]))


def _phase_ends(steps: int, every: int) -> list[int]:
    ends = list(range(every, steps, every))
    return ends + [steps]


def train_selfcond(store: Store, plan: SelfCondPlan | dict, producer: dict | None = None, log=print,
                   progress: Callable[[int, int, dict], None] | None = None) -> dict:
    """Train the GAN phase by phase, re-clustering on D's features between phases; save the
    final conditions as the run's clustering (labels + centres + report) and the model, and
    record lineage (``model`` and ``clustering`` artifacts). Resumes finished phases.

    Returns the clustering summary (what ``cluster_run.write_partitions`` takes) with the model's.
    """

    from cci_core.common.device import pick_device
    from cci_core.common.seeding import seeded
    from cci_core.generate.gan import Discriminator
    from cci_core.generate.sampling import load_discriminator
    from cci_core.generate.training_loop import train_generator
    plan = _plan(plan)
    p = plan.params
    rdir, k = fs.as_path(plan.run_dir), plan.k
    sdir, out_dir = rdir / "selfcond", rdir / "models" / "conditional"
    sdir.mkdir(parents=True, exist_ok=True)
    corpus = open_corpus(store, plan.corpus, plan.corpus_version)
    images, n = corpus.images(), corpus.n_rows
    y = corpus.labels()
    y_codes = pd.factorize(y)[0] if y is not None else None
    cfg = plan.gan_config
    device = pick_device(p.device)
    fit_rows = None
    if p.feature_rows is not None and p.feature_rows < n:
        fit_rows = np.sort(np.random.default_rng(p.seed).choice(n, p.feature_rows, replace=False))
    hist_path = sdir / "history.json"
    history = read_json(hist_path) if hist_path.exists() else []
    timings = {"train_seconds": 0.0, "features_seconds": 0.0, "kmeans_seconds": 0.0}

    def features_of(D):
        t0 = time.perf_counter()
        X = discriminator_features(D, images, n)
        timings["features_seconds"] += time.perf_counter() - t0
        return X

    def cluster_step(D, previous, step):
        X = features_of(D)
        t0 = time.perf_counter()
        if previous is None:
            if fit_rows is None:
                labels, centres = initial_clusters(X, k, p.seed, p.kmeans_iters)
            else:
                _, centres = initial_clusters(X[fit_rows], k, p.seed, p.kmeans_iters)
                labels, centres, _ = kmeans_from(X, centres, 1)
            res = {"labels": labels, "centres": centres, "changed": None, "passes": None}
        elif fit_rows is None:
            res = recluster(X, previous, k, p.kmeans_iters)
        else:
            sub = recluster(X[fit_rows], previous[fit_rows], k, p.kmeans_iters)
            from cci_core.cluster.kmeans import MiniBatchKMeans
            km = MiniBatchKMeans(n_clusters=k, compute_labels=False)
            km.cluster_centers_ = sub["centres"]
            labels = match_labels(previous, km.predict(X).astype(np.int32), k)
            res = {**sub, "labels": labels, "changed": float((labels != previous).mean())}
        timings["kmeans_seconds"] += time.perf_counter() - t0
        entry = {"step": step, "changed": res["changed"], "passes": res["passes"],
                 "sizes": np.bincount(res["labels"], minlength=k).tolist(), **label_scores(res["labels"], y_codes)}
        return res, X, entry

    def labels_file(step):
        return sdir / f"labels-step-{step:07d}.npy"

    # -- the conditions before the first step
    if labels_file(0).exists():
        labels = fs.load_npy(labels_file(0))
    else:
        if p.init == "parent":
            labels = cluster_run.run_labels(runs.read_run(store, plan.parent_run)).astype(np.int32)
            if labels.min() < 0 or labels.max() >= k:
                raise ValueError(f"--init parent needs the parent's ids in [0, {k}) with no noise rows; "
                                 "use --init discriminator")
            history = [{"step": 0, "init": "parent", "sizes": np.bincount(labels, minlength=k).tolist(),
                        **label_scores(labels, y_codes)}]
        else:
            with seeded(p.seed):
                D0 = Discriminator(cfg).to(device)
            res, _, entry = cluster_step(D0, None, 0)
            parent_labels = cluster_run.run_labels(runs.read_run(store, plan.parent_run))
            if parent_labels.max() < k and parent_labels.min() >= 0:  # start ids aligned with the parent's
                labels = match_labels(parent_labels, res["labels"], k)
            else:
                labels = res["labels"]
            history = [{**entry, "init": "discriminator"}]
        fs.save_npy(labels_file(0), labels)
        atomic_write_json(hist_path, history)

    # -- phases: train to the phase end with the current conditions, then re-cluster
    ends = _phase_ends(p.steps, p.recluster_every)
    X = centres = None
    for end in ends:
        if labels_file(end).exists():
            labels = fs.load_npy(labels_file(end))
            continue
        t0 = time.perf_counter()
        res = train_generator(images, out_dir, cfg, p.train_config(end), n_rows=n, labels=labels, progress=progress)
        timings["train_seconds"] += time.perf_counter() - t0
        D = load_discriminator(out_dir, p.device)
        rc, X, entry = cluster_step(D, labels, end)
        labels, centres = rc["labels"], rc["centres"]
        log(f"step {end}/{p.steps}: re-clustered on D's features, {entry['changed']:.1%} of rows changed "
            f"condition" + (f", nmi {entry['nmi']:.3f}" if "nmi" in entry else ""))
        history.append({**entry, "losses": res["losses"]})
        fs.save_npy(labels_file(end), labels)
        atomic_write_json(hist_path, history)
    if centres is None:  # every phase was resumed: the final centres from the final D
        D = load_discriminator(out_dir, p.device)
        X = features_of(D)
        centres = cluster_means(X, labels, k)[0]
    return _publish(store, plan, corpus, labels, centres, X, y_codes, history, timings, str(device), producer)


def _publish(store: Store, plan: SelfCondPlan, corpus, labels, centres, X, y_codes, history: list, timings: dict,
             device: str, producer: dict | None) -> dict:
    """Record the model, write the final conditions as the run's clustering (labels, centres, report) and
    record it; returns the clustering summary."""
    from cci_core.cluster.cluster_metrics import clustering_report
    p, k, rdir = plan.params, plan.k, fs.as_path(plan.run_dir)
    out_dir = rdir / "models" / "conditional"
    final = history[-1]
    model_params = model_lineage_params(
        asdict(p), run_id=plan.run_id, corpus=plan.corpus, corpus_version=plan.corpus_version, job="conditional",
        job_kind="self-conditioned", model="gan", model_config=asdict(plan.gan_config), n_classes=k)
    model_art = record_model(store, plan.run_id, "conditional", out_dir, model_params,
                             model_metrics(p.steps, corpus.n_rows, final.get("losses") or {}), producer,
                             [(plan.corpus_artifact_id, "corpus"),
                              (plan.parent_clustering_artifact_id, "initial_clustering")])
    cdir = rdir / "clustering"
    lab_path = write_labels(cdir, corpus, labels)
    fs.save_npy(cdir / "centres.npy", centres.astype(np.float32))
    report = clustering_report(X, labels, centres, y_true=y_codes, sample_size=10000, seed=p.seed)
    report.update(algorithm="self-conditioned kmeans", space="discriminator features", k=k,
                  corpus=plan.corpus, corpus_version=plan.corpus_version, run_id=plan.run_id,
                  parent_run=plan.parent_run, history=history,
                  timings={a: round(b, 3) for a, b in timings.items()})
    atomic_write_json(rdir / "reports" / "metrics.json", report)
    headline = {m: report.get(m) for m in ("inertia", "silhouette", "acc", "nmi", "ari", "purity")
                if isinstance(report.get(m), (int, float))}
    clustering = runs.lineage_store(store).record(
        "clustering", f"{plan.run_id}/clustering", str(cdir), hash_files([lab_path, cdir / "centres.npy"]),
        size=lab_path.stat().st_size, params={**asdict(p), "k": k, "parent_run": plan.parent_run},
        metrics={"n_clusters": k, **headline}, producer=producer,
        inputs=[(model_art.id, "model"), (plan.parent_clustering_artifact_id, "initial_clustering"),
                (plan.corpus_artifact_id, "corpus")])
    sizes = np.bincount(labels, minlength=k).tolist()
    cl = {"clustering_artifact_id": clustering.id, "model_artifact_id": model_art.id, "k": k, "n_clusters": k,
          "n_noise": 0, "sizes": sizes, "metrics": headline, "report": str(rdir / "reports" / "metrics.json"),
          "history": history, "timings": {a: round(b, 3) for a, b in timings.items()},
          "device": device}
    runs.update_run(store, plan.run_id, clustering={a: b for a, b in cl.items() if a != "history"})
    return cl


def finish_selfcond(store: Store, plan: SelfCondPlan | dict, cl: dict, parts: list[dict]) -> dict:
    """``models/training.json`` (one ``conditional`` GAN, what generate / evaluate read), the cluster
    explorer ``reports/explore.html`` and run.json status ``complete``."""
    from cci_core.generate.explore_generated import explore_with_generators
    plan = _plan(plan)
    p = plan.params
    out_dir = fs.as_path(plan.run_dir) / "models" / "conditional"
    clusters = [q["cluster"] for q in parts]
    model = ModelRecord.build(
        name="conditional", kind="conditional", model="gan", out_dir=out_dir, cluster=None, clusters=tuple(clusters),
        n_train=plan.n_rows, steps=p.steps, step_budget=p.steps, seconds=cl["timings"]["train_seconds"],
        resumed_from=None, losses=cl["history"][-1].get("losses") or {}, artifact_id=cl["model_artifact_id"],
        samples=last_sample(out_dir), loss_curve=str(out_dir / "loss.png"), device=cl["device"],
        self_conditioned=True).to_json()
    relpaths.write_record(store.root, out_dir / "model.json", model)
    train_params = {"model": "gan", "mode": "self-conditioned", "steps": p.steps, "batch_size": p.batch_size,
                    "width": p.width, "z_dim": p.z_dim, "loss": p.loss, "seed": p.seed,
                    "recluster_every": p.recluster_every}
    write_training_report(store, run_id=plan.run_id, run_dir=plan.run_dir, corpus=plan.corpus,
                          corpus_version=plan.corpus_version, params=train_params, mode="self-conditioned",
                          model="gan", trained_clusters=clusters, skipped=[], total_steps=p.steps, models=[model])
    explore_with_generators(store, plan.run_id)  # reports/explore.html
    return runs.finish_run(store, plan.run_id)


def selfcond_local(store: Store, run_id: str, params: SelfCondParams | None = None,
                   new_run_id: str | None = None, log=print) -> dict:
    """Every step in this process; returns the finished run.json of the new run."""
    plan = start_selfcond(store, run_id, params or SelfCondParams(), new_run_id)
    cl = train_selfcond(store, plan, log=log)
    parts = cluster_run.write_partitions(store, plan, cl, [(cl["model_artifact_id"], "model")])
    return finish_selfcond(store, plan, cl, parts)
