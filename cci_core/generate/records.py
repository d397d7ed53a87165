"""The typed contracts of the generate stage: the plan of a training and of an evaluation, and the record of
one trained generator.

Each is a frozen dataclass converted to and from the JSON dicts the Prefect tasks pass and the files hold
(``plan.to_json()`` / ``TrainingPlan.from_json(d)``), which stay exactly as they were. The model record is
built in one place (:meth:`ModelRecord.build`) for ``model.json``, ``training.json`` and the lineage params
(:func:`model_lineage_params`, :func:`model_metrics`).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cci_core.generate.settings import EvalParams, TrainParams
from cci_core.store import fs
from cci_core.store.store import utc_now


def _tuple(values) -> tuple | None:
    return None if values is None else tuple(values)


def _list(values) -> list | None:
    return None if values is None else list(values)


def as_plan(cls, plan):
    """``plan`` as a ``cls``: a JSON dict (what the tasks pass) is converted, a ``cls`` is returned as is."""
    return cls.from_json(plan) if isinstance(plan, Mapping) else plan


# ----------------------------------------------------------------------------- training

@dataclass(frozen=True)
class TrainJob:
    """One generator to train: a cluster's, the conditional GAN or the baseline.

    ``kind`` is None for a job known by its name only (a list that orders a training report).
    """
    name: str
    kind: str | None = None
    cluster: int | None = None
    clusters: tuple[int, ...] | None = None
    count: int | None = None
    partition_artifact_id: str | None = None
    partition_artifact_ids: tuple[str, ...] | None = None
    steps: int | None = None
    seconds: float | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TrainJob:
        return cls(name=d["name"], kind=d.get("kind"), cluster=d.get("cluster"), clusters=_tuple(d.get("clusters")),
                   count=d.get("count"), partition_artifact_id=d.get("partition_artifact_id"),
                   partition_artifact_ids=_tuple(d.get("partition_artifact_ids")), steps=d.get("steps"),
                   seconds=d.get("seconds"))

    def to_json(self) -> dict[str, Any]:
        if self.kind is None:
            return {"name": self.name}
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "cluster":
            out.update(cluster=self.cluster, count=self.count, partition_artifact_id=self.partition_artifact_id)
        elif self.kind in ("conditional", "shared"):
            out.update(clusters=_list(self.clusters), count=self.count,
                       partition_artifact_ids=_list(self.partition_artifact_ids))
        else:
            out.update(count=self.count)
        out.update(steps=self.steps, seconds=self.seconds)
        return out


@dataclass(frozen=True)
class SkippedCluster:
    """A cluster that got no generator, and why."""
    cluster: int
    count: int
    reason: str

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SkippedCluster:
        return cls(d["cluster"], d["count"], d["reason"])

    def to_json(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "count": self.count, "reason": self.reason}


@dataclass(frozen=True)
class TrainingPlan:
    """A checked ``cci train`` request: the run it reads and the jobs to do (``plan_training``'s result)."""
    run_id: str
    store: str
    run_dir: str
    corpus: str
    corpus_version: int
    corpus_artifact_id: str
    clustering_artifact_id: str
    n_rows: int
    shape: tuple[int, int, int]
    n_clusters: int
    params: TrainParams
    jobs: tuple[TrainJob, ...]
    skipped: tuple[SkippedCluster, ...]
    trained_clusters: tuple[int, ...]
    total_steps: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TrainingPlan:
        return cls(run_id=d["run_id"], store=d["store"], run_dir=d["run_dir"], corpus=d["corpus"],
                   corpus_version=d["corpus_version"], corpus_artifact_id=d["corpus_artifact_id"],
                   clustering_artifact_id=d["clustering_artifact_id"], n_rows=d["n_rows"], shape=tuple(d["shape"]),
                   n_clusters=d["n_clusters"], params=TrainParams(**d["params"]),
                   jobs=tuple(TrainJob.from_json(j) for j in d["jobs"]),
                   skipped=tuple(SkippedCluster.from_json(s) for s in d["skipped"]),
                   trained_clusters=tuple(d["trained_clusters"]), total_steps=d["total_steps"])

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "store": self.store, "run_dir": self.run_dir, "corpus": self.corpus,
                "corpus_version": self.corpus_version, "corpus_artifact_id": self.corpus_artifact_id,
                "clustering_artifact_id": self.clustering_artifact_id, "n_rows": self.n_rows,
                "shape": list(self.shape), "n_clusters": self.n_clusters, "params": asdict(self.params),
                "jobs": [j.to_json() for j in self.jobs], "skipped": [s.to_json() for s in self.skipped],
                "trained_clusters": list(self.trained_clusters), "total_steps": self.total_steps}

    def out_dir(self, job: TrainJob) -> Path:
        """The folder of one job's generator: ``runs/<run-id>/models/<job name>/``."""
        return fs.as_path(self.run_dir) / "models" / job.name

    def model_config(self, job: TrainJob):
        """The GANConfig or VAEConfig of one job."""
        return self.params.model_config(self.shape, job.kind, self.n_clusters)

    def train_config(self, job: TrainJob):
        """The TrainConfig of one job: a cluster's model fine-tuned from a shared start starts from its
        last checkpoint (a conditional GAN's cut down to the job's cluster)."""
        tcfg = self.params.train_config(job.kind, job.steps, job.seconds)
        shared = self.shared_job()
        if job.kind == "cluster" and shared is not None:
            tcfg = replace(tcfg, init_from=str(self.out_dir(shared)),
                           init_cluster=job.cluster if self.params.is_gan("cluster") else None)
        return tcfg

    def shared_job(self) -> TrainJob | None:
        """The shared-start job the cluster jobs are fine-tuned from, if any."""
        return next((j for j in self.jobs if j.kind == "shared"), None)


# ----------------------------------------------------------------------------- the model record

@dataclass(frozen=True)
class ModelRecord:
    """One trained generator, as ``models/<name>/model.json`` and ``training.json``'s ``models`` list it.

    ``wall_seconds`` and ``device`` are left out of the JSON when unset (the self-conditioned GAN's record
    has no wall time; records written before devices were recorded have no device); ``extra`` keeps the
    keys added after training (``from_earlier_run``, the Dask worker), in order.
    """
    name: str
    kind: str
    model: str
    cluster: int | None
    clusters: tuple[int, ...] | None
    n_train: int
    steps: int
    step_budget: int
    seconds: float
    resumed_from: int | None
    losses: Mapping[str, float]
    artifact_id: str
    dir: str
    generator: str
    samples: str | None
    loss_curve: str | None
    finished_at: str
    wall_seconds: float | None = None
    device: str | None = None
    self_conditioned: bool = False
    # what the model costs: generator parameters, images seen in training, the task's peak resident memory
    n_params: int | None = None
    images_seen: int | None = None
    peak_rss_mb: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    _KEYS = ("name", "kind", "model", "cluster", "clusters", "n_train", "steps", "step_budget", "seconds",
             "wall_seconds", "resumed_from", "losses", "artifact_id", "dir", "generator", "samples", "loss_curve",
             "device", "self_conditioned", "n_params", "images_seen", "peak_rss_mb", "finished_at")
    _OPTIONAL = ("wall_seconds", "device", "self_conditioned", "n_params", "images_seen", "peak_rss_mb")

    @classmethod
    def build(cls, *, name: str, kind: str, model: str, out_dir: str | Path, samples: str | None,
              loss_curve: str | None, **fields) -> ModelRecord:
        """A fresh record of the generator in ``out_dir``, finished now."""
        out_dir = fs.as_path(out_dir)
        return cls(name=name, kind=kind, model=model, dir=str(out_dir), generator=str(out_dir / "generator.safetensors"),
                   samples=samples, loss_curve=loss_curve, finished_at=utc_now(), **fields)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ModelRecord:
        known = {k: d.get(k) for k in cls._KEYS}
        known["clusters"] = _tuple(known["clusters"])
        known["self_conditioned"] = bool(known["self_conditioned"])
        return cls(**known, extra={k: v for k, v in d.items() if k not in cls._KEYS})

    def to_json(self) -> dict[str, Any]:
        out = {}
        for k in self._KEYS:
            v = getattr(self, k)
            if k in self._OPTIONAL and (v is None or v is False):
                continue
            out[k] = _list(v) if k == "clusters" else (dict(v) if k == "losses" else v)
        out.update(self.extra)
        return out


def model_lineage_params(params: Mapping[str, Any], *, run_id: str, corpus: str, corpus_version: int, job: str,
                         job_kind: str, **more) -> dict[str, Any]:
    """A ``model`` artifact's lineage params: the settings it was trained with, where, and ``more``."""
    return {**params, "run_id": run_id, "corpus": corpus, "corpus_version": corpus_version, "job": job,
            "job_kind": job_kind, **more}


def model_metrics(steps: int, n_train: int, losses: Mapping[str, float], seconds: float | None = None) -> dict:
    """A ``model`` artifact's lineage metrics: steps, rows, (seconds,) the final losses as ``loss_<name>``."""
    out: dict[str, Any] = {"steps": steps, "n_train": n_train}
    if seconds is not None:
        out["seconds"] = round(seconds, 3)
    out.update({f"loss_{k.removeprefix('loss_')}": float(v) for k, v in losses.items()})
    return out


def read_training(store, path: Any) -> dict:
    """``models/training.json`` at PATH, its paths resolved under STORE, checked once: its ``models``
    a list of objects naming ``name``, ``kind`` and ``dir`` (what generate, evaluate, train and the
    feature spaces read); a damaged one is one error naming the file and the field."""
    from cci_core.store import relpaths
    from cci_core.store.record_check import check_fields
    fix = "restore it from a backup, or train the run's generators again (`cci train RUN`)"
    record = check_fields(relpaths.read_record(store.root, path), path, fix, {"models": list}, root=store.root)
    for i, m in enumerate(record.get("models") or ()):
        check_fields(m, path, fix, {"kind": str, "dir": str, "name": str}, prefix=f"models[{i}].", root=store.root)
    return record


# ----------------------------------------------------------------------------- evaluation

@dataclass(frozen=True)
class GroupModel:
    """One generator of an evaluation group."""
    name: str
    cluster: int | None
    clusters: tuple[int, ...] | None
    dir: str
    artifact_id: str
    steps: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> GroupModel:
        return cls(d["name"], d.get("cluster"), _tuple(d.get("clusters")), d["dir"], d["artifact_id"], d["steps"])

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "cluster": self.cluster, "clusters": _list(self.clusters), "dir": self.dir,
                "artifact_id": self.artifact_id, "steps": self.steps}


@dataclass(frozen=True)
class EvalGroup:
    """Models measured together: ``per_cluster`` (one per cluster), ``conditional`` or ``baseline``."""
    group: str
    model: str
    models: tuple[GroupModel, ...]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> EvalGroup:
        return cls(d["group"], d["model"], tuple(GroupModel.from_json(m) for m in d["models"]))

    def to_json(self) -> dict[str, Any]:
        return {"group": self.group, "model": self.model, "models": [m.to_json() for m in self.models]}


@dataclass(frozen=True)
class ClusterSize:
    cluster: int
    count: int


@dataclass(frozen=True)
class EvaluationPlan:
    """A checked ``cci evaluate`` request: the run, its trained models in groups (``plan_evaluation``'s result).

    ``training`` is the training report's mode, model, total_steps and params, as that report holds them.
    """
    run_id: str
    store: str
    run_dir: str
    eval_dir: str
    corpus: str
    corpus_version: int
    corpus_artifact_id: str
    clustering_artifact_id: str
    n_rows: int
    shape: tuple[int, int, int]
    n_clusters: int
    partitions: tuple[ClusterSize, ...]
    trained_clusters: tuple[int, ...]
    skipped: tuple[SkippedCluster, ...]
    training: Mapping[str, Any]
    has_labels: bool
    classifier: str | None
    classifier_artifact_id: str | None
    params: EvalParams
    groups: tuple[EvalGroup, ...]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> EvaluationPlan:
        return cls(run_id=d["run_id"], store=d["store"], run_dir=d["run_dir"], eval_dir=d["eval_dir"],
                   corpus=d["corpus"], corpus_version=d["corpus_version"], corpus_artifact_id=d["corpus_artifact_id"],
                   clustering_artifact_id=d["clustering_artifact_id"], n_rows=d["n_rows"], shape=tuple(d["shape"]),
                   n_clusters=d["n_clusters"],
                   partitions=tuple(ClusterSize(p["cluster"], p["count"]) for p in d["partitions"]),
                   trained_clusters=tuple(d["trained_clusters"]),
                   skipped=tuple(SkippedCluster.from_json(s) for s in d["skipped"]), training=d["training"],
                   has_labels=d["has_labels"], classifier=d.get("classifier"),
                   classifier_artifact_id=d.get("classifier_artifact_id"), params=EvalParams(**d["params"]),
                   groups=tuple(EvalGroup.from_json(g) for g in d["groups"]))

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "store": self.store, "run_dir": self.run_dir, "eval_dir": self.eval_dir,
                "corpus": self.corpus, "corpus_version": self.corpus_version,
                "corpus_artifact_id": self.corpus_artifact_id, "clustering_artifact_id": self.clustering_artifact_id,
                "n_rows": self.n_rows, "shape": list(self.shape), "n_clusters": self.n_clusters,
                "partitions": [{"cluster": p.cluster, "count": p.count} for p in self.partitions],
                "trained_clusters": list(self.trained_clusters), "skipped": [s.to_json() for s in self.skipped],
                "training": dict(self.training), "has_labels": self.has_labels, "classifier": self.classifier,
                "classifier_artifact_id": self.classifier_artifact_id, "params": asdict(self.params),
                "groups": [g.to_json() for g in self.groups]}
