"""Generators for the clusters of a finished run, and honest measures of what they make:
the pure logic behind ``cci train`` and ``cci evaluate``.

Like :mod:`cci_core.cluster.cluster_run`, each step reads what the step before it wrote in
``runs/<run-id>/``, writes its own files, records lineage, and returns a small JSON-ready
dict (paths and ids, never arrays)::

    plan = plan_training(store, run_id, TrainParams(steps=2000))   # checks only, writes nothing
    results = [train_job(store, plan, job) for job in plan["jobs"]] # one job per cluster (+ baseline)
    summary = finish_training(store, plan, results)                 # models/training.json

    ev = plan_evaluation(store, run_id, EvalParams(samples=500))    # checks only
    refs = prepare_references(store, ev)                            # classifier, reference CNN, real features
    groups = [evaluate_group(store, ev, refs, g) for g in ev["groups"]]
    report = write_report(store, ev, refs, groups)                  # reports/generation.json

(:func:`train_local` and :func:`evaluate_local` do all of them in this process.)

Run folder, added to the clustering run's::

    runs/<run-id>/models/cluster-<k>/      one generator per cluster (train_generator's out_dir:
                                           checkpoints/, samples/, generator.*, loss.png) + model.json
                 models/conditional/        the one cluster-conditional GAN (--mode conditional)
                 models/baseline/           one unconditional GAN on the whole corpus, same total steps
                 models/training.json       the trained models (the last `cci train`'s, plus earlier
                                            ones it did not touch) and the skipped clusters
                 cluster-cnn/               stand-in cluster classifier (only when the run has no CCI
                                            classifier): a reference CNN trained on the cluster labels
                 reference-cnn/             reference CNN trained on the corpus's true labels (if any)
                 reports/eval/              real features, per-group results, generated grids
                 reports/generation.json    the evaluation report

Step budget: ``steps`` (and ``seconds``) are per cluster; the conditional GAN and the
unconditional baseline get ``steps`` times the number of trained clusters, the same total.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np

from cci_core.cluster.cluster_run import hash_files, partition_rows, run_labels
from cci_core.store.corpus import open_corpus
from cci_core.store.runs import finished_run, lineage_store, update_run
from cci_core.store.store import Store, atomic_write_json, read_json, utc_now

MODELS = ("gan", "vae")
MODES = ("per-cluster", "conditional")
# cci_core.generate.gan.SIZES and D_CONDITIONS, repeated so that checking a request (the CLI, before any
# work) needs no torch
SIZES = (28, 32, 64)
D_CONDITIONS = ("concat", "projection")
HEADLINE = ("fid", "kid", "precision", "recall", "density", "coverage", "fidelity", "is")


# ----------------------------------------------------------------------------- parameters

@dataclass
class TrainParams:
    """Everything ``cci train`` depends on (recorded in each model's lineage params).

    model : ``gan`` (DCGAN-style) or ``vae``, one per cluster
    mode : ``per-cluster`` (one model per cluster) or ``conditional`` (one cluster-conditional GAN)
    steps : training steps per cluster; the conditional GAN and the baseline get
        ``steps`` x (number of trained clusters)
    seconds : optional time budget per cluster (scaled the same way), summed over resumes
    batch_size, lr : optimiser
    min_size : clusters with fewer images are skipped (listed in the report with the reason)
    ema : keep an EMA of the generator weights (decay ``ema_decay``; GAN only)
    checkpoint_every : steps between checkpoints (safetensors + JSON) and sample grids
    seed : every random draw derives from it
    baseline : also train one unconditional GAN on the whole corpus with the same total steps
    width, z_dim : model capacity (GAN g_width = d_width = width, d_features = 4 x width;
        VAE width); latent size
    loss : GAN loss, ``hinge`` or ``ns``
    d_condition : how the conditional GAN's discriminator sees the cluster id: ``concat``
        (one-hot planes on the image) or ``projection``
    mode_seeking : weight of the mode-seeking term (MSGAN) for the GANs (0 = off); None = 1
        for the conditional GAN, whose within-cluster collapse it is for (Fashion-MNIST, 3,000
        steps: FD 4.5 -> 3.6, recall 0.82 -> 0.89), and 0 for the unconditional ones, which it
        does not help (baseline FD 9.9 -> 9.0) or hurts (per-cluster at 300 steps: 22 -> 42)
    device : None = CUDA when present, else CPU (mixed precision only on CUDA)
    """
    model: str = "gan"
    mode: str = "per-cluster"
    steps: int = 2000
    seconds: float | None = None
    batch_size: int = 64
    lr: float | None = None
    min_size: int = 100
    ema: bool = False
    ema_decay: float = 0.999
    checkpoint_every: int = 500
    seed: int = 0
    baseline: bool = True
    width: int = 32
    z_dim: int = 64
    loss: str = "hinge"
    d_condition: str = "concat"
    mode_seeking: float | None = None
    device: str | None = None

    def validate(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"--model {self.model!r}: use one of {', '.join(MODELS)}")
        if self.mode not in MODES:
            raise ValueError(f"--mode {self.mode!r}: use one of {', '.join(MODES)}, or self-conditioned "
                             "(`cci train --mode self-conditioned`, which runs `cci self-condition`)")
        if self.mode == "conditional" and self.model != "gan":
            raise ValueError("--mode conditional trains a cluster-conditional GAN; use --model gan with it")
        if self.d_condition not in D_CONDITIONS:
            raise ValueError(f"--d-condition {self.d_condition!r}: use one of {', '.join(D_CONDITIONS)}")
        if self.mode_seeking is not None and self.mode_seeking < 0:
            raise ValueError(f"--mode-seeking {self.mode_seeking} must be >= 0 (0 = off)")
        if _mode_seeking(self.mode_seeking, self.mode) and self.batch_size < 2:
            raise ValueError(f"--batch-size {self.batch_size}: mode seeking compares pairs of images; "
                             "use --batch-size 2 or more, or --mode-seeking 0")
        if self.ema and self.model != "gan":
            raise ValueError("--ema keeps an average of GAN generator weights; a VAE has none (drop --ema)")
        for name in ("steps", "batch_size", "checkpoint_every", "width", "z_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)} must be a positive integer")
        if self.min_size < 1:
            raise ValueError(f"--min-size {self.min_size} must be >= 1")
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError(f"--seconds {self.seconds} must be positive")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay={self.ema_decay} must lie in (0, 1)")


@dataclass
class EvalParams:
    """Everything ``cci evaluate`` depends on.

    samples : generated images per cluster on average: samples x clusters in all, shared out
        in proportion to the cluster sizes (the corpus's own mixture), at least k + 2 each;
        the baseline makes the same total
    max_real : real images per cluster compared against (a seeded sample when larger);
        the whole-corpus comparison uses up to max_real x clusters
    ref_steps, ref_rows : training steps / at most this many rows for the reference CNNs
    k : neighbours for precision/recall/density/coverage
    kid_subsets, kid_subset_size, is_splits : KID and IS-analogue settings
    seed, device : as for training
    """
    samples: int = 500
    max_real: int = 2000
    ref_steps: int = 600
    ref_rows: int = 60000
    k: int = 5
    kid_subsets: int = 50
    kid_subset_size: int = 1000
    is_splits: int = 10
    seed: int = 0
    device: str | None = None

    def validate(self) -> None:
        if self.k < 1:
            raise ValueError(f"k={self.k} must be >= 1")
        if self.samples < self.k + 2:
            raise ValueError(f"--samples {self.samples}: at least {self.k + 2} images per cluster are "
                             f"needed for the k={self.k} nearest-neighbour measures")
        if self.max_real < self.k + 2:
            raise ValueError(f"--max-real {self.max_real} must be >= {self.k + 2}")
        for name in ("ref_steps", "ref_rows", "kid_subsets", "is_splits"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.kid_subset_size < 2:
            raise ValueError(f"kid_subset_size={self.kid_subset_size} must be >= 2")


# ----------------------------------------------------------------------------- training

def model_config(plan: dict, job: dict):
    """The model configuration of one training job: a GANConfig or a VAEConfig."""
    from cci_core.generate.gan import GANConfig
    from cci_core.generate.vae import VAEConfig
    p = plan["params"]
    size, channels = plan["shape"][0], plan["shape"][2]
    if job["kind"] == "baseline" or p["model"] == "gan":
        n_classes = plan["n_clusters"] if job["kind"] == "conditional" else 0
        return GANConfig(image_size=size, channels=channels, z_dim=p["z_dim"], g_width=p["width"],
                         d_width=p["width"], d_features=4 * p["width"], n_classes=n_classes, loss=p["loss"],
                         d_condition=p["d_condition"])
    return VAEConfig(image_size=size, channels=channels, z_dim=p["z_dim"], width=p["width"])


def train_config(plan: dict, job: dict):
    """The :class:`~cci_core.generate.train_generator.TrainConfig` of one training job."""
    from cci_core.generate.train_generator import TrainConfig
    p = plan["params"]
    gan = job["kind"] == "baseline" or p["model"] == "gan"
    return TrainConfig(steps=job["steps"], seconds=job["seconds"], batch_size=p["batch_size"], lr=p["lr"],
                       ema_decay=p["ema_decay"] if (p["ema"] and gan) else None,
                       mode_seeking=_mode_seeking(p["mode_seeking"], job["kind"]) if gan else 0.0,
                       checkpoint_every=min(p["checkpoint_every"], job["steps"]), seed=p["seed"],
                       device=p["device"])


def _mode_seeking(weight: float | None, kind: str) -> float:
    """The mode-seeking weight of a ``conditional`` GAN or another kind: unset = 1 / 0."""
    if weight is not None:
        return float(weight)
    return 1.0 if kind == "conditional" else 0.0


def _latest_checkpoint_info(out_dir: Path) -> dict | None:
    found = sorted((p for p in (out_dir / "checkpoints").glob("step-*")
                    if (p / "state.json").exists() and (p / "state.safetensors").exists()),
                   key=lambda p: int(p.name.split("-")[1]))
    return read_json(found[-1] / "state.json") if found else None


def _check_existing(plan: dict, job: dict) -> None:
    """Refuse to train over a model of another kind or shape (nothing is overwritten)."""
    out_dir = Path(plan["run_dir"]) / "models" / job["name"]
    info = _latest_checkpoint_info(out_dir)
    if info is None:
        return
    cfg, tcfg = model_config(plan, job), train_config(plan, job)
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


def plan_training(store: Store, run_id: str, params: TrainParams) -> dict:
    """Check a training request and list its jobs; writes nothing.

    Raises one clear error for an unknown run, a run with no finished clustering, image
    sizes the generators do not support, bad parameters, every cluster below ``min_size``,
    or models already trained in the run with other settings.
    """
    params.validate()
    run = finished_run(store, run_id)
    h, w, c = run["shape"]
    if h != w or h not in SIZES or c not in (1, 3):
        raise ValueError(f"run {run_id!r} clustered {h}x{w}x{c} images; the generators make square "
                         f"{', '.join(map(str, SIZES))}-pixel images with 1 or 3 channels: re-ingest the "
                         f"corpus with --size {SIZES[0]}x{SIZES[0]} (or 32x32, 64x64) and cluster it again")
    eligible, skipped = [], []
    for part in run["partitions"]:
        if part["count"] >= params.min_size:
            eligible.append(part)
        else:
            skipped.append({"cluster": part["cluster"], "count": part["count"],
                            "reason": f"{part['count']} images, fewer than --min-size {params.min_size}"})
    if not eligible:
        largest = max(p["count"] for p in run["partitions"])
        raise ValueError(f"every cluster of run {run_id!r} is smaller than --min-size {params.min_size} "
                         f"(the largest has {largest} images); lower --min-size")
    n = len(eligible)
    scaled = None if params.seconds is None else params.seconds * n
    jobs = []
    if params.mode == "per-cluster":
        jobs += [{"name": f"cluster-{p['cluster']}", "kind": "cluster", "cluster": p["cluster"],
                  "count": p["count"], "partition_artifact_id": p["artifact_id"], "steps": params.steps,
                  "seconds": params.seconds} for p in eligible]
    else:
        jobs.append({"name": "conditional", "kind": "conditional", "clusters": [p["cluster"] for p in eligible],
                     "count": sum(p["count"] for p in eligible),
                     "partition_artifact_ids": [p["artifact_id"] for p in eligible],
                     "steps": params.steps * n, "seconds": scaled})
    if params.baseline:
        jobs.append({"name": "baseline", "kind": "baseline", "count": run["n_rows"],
                     "steps": params.steps * n, "seconds": scaled})
    plan = {"run_id": run_id, "store": str(store.root), "run_dir": str(store.run_dir(run_id)),
            "corpus": run["corpus"], "corpus_version": run["corpus_version"],
            "corpus_artifact_id": run["corpus_artifact_id"],
            "clustering_artifact_id": run["clustering"]["clustering_artifact_id"],
            "n_rows": run["n_rows"], "shape": list(run["shape"]), "n_clusters": len(run["partitions"]),
            "params": asdict(params), "jobs": jobs, "skipped": skipped,
            "trained_clusters": [p["cluster"] for p in eligible], "total_steps": params.steps * n}
    for job in jobs:
        _check_existing(plan, job)
    return plan


def train_job(store: Store, plan: dict, job: dict, producer: dict | None = None,
              progress: Callable[[int, int, dict], None] | None = None) -> dict:
    """Train (or resume) one generator of the plan and record it as a ``model`` artifact.

    A cluster job reads only its partition's rows from the corpus Zarr; the conditional
    job reads the rows of every trained cluster with their cluster ids; the baseline
    reads the whole corpus. Returns the job's summary (also ``models/<name>/model.json``).
    """
    from cci_core.generate.train_generator import train_generator
    run_id = plan["run_id"]
    corpus = open_corpus(store, plan["corpus"], plan["corpus_version"])
    out_dir = Path(plan["run_dir"]) / "models" / job["name"]
    cfg, tcfg = model_config(plan, job), train_config(plan, job)
    rows = labels = None
    inputs = [(plan["corpus_artifact_id"], "corpus")]
    if job["kind"] == "cluster":
        rows = partition_rows(store, run_id, job["cluster"])
        inputs.append((job["partition_artifact_id"], "partition"))
    elif job["kind"] == "conditional":
        parts = [partition_rows(store, run_id, k) for k in job["clusters"]]
        rows = np.concatenate(parts)
        labels = np.concatenate([np.full(len(r), k, np.int64) for r, k in zip(parts, job["clusters"])])
        inputs += [(aid, "partition") for aid in job["partition_artifact_ids"]]
    t0 = time.perf_counter()
    res = train_generator(corpus.images(), out_dir, cfg, tcfg, rows=rows, n_rows=corpus.n_rows,
                          labels=labels, progress=progress)
    wall = time.perf_counter() - t0
    gen = Path(res["generator"])
    files = [gen, gen.with_suffix(".json")]
    losses = {k: float(v) for k, v in res["losses"].items()}
    params = {**plan["params"], "run_id": run_id, "corpus": plan["corpus"],
              "corpus_version": plan["corpus_version"], "job": job["name"], "job_kind": job["kind"],
              "cluster": job.get("cluster"), "clusters": job.get("clusters"), "step_budget": job["steps"],
              "seconds_budget": job["seconds"], "model_config": asdict(cfg), "train_config": asdict(tcfg)}
    art = lineage_store(store).record(
        "model", f"{run_id}/models/{job['name']}", str(out_dir), hash_files(files),
        size=sum(f.stat().st_size for f in files), params=params,
        metrics={"steps": res["steps"], "n_train": res["n_train"], "seconds": round(res["seconds"], 3),
                 **{f"loss_{k.removeprefix('loss_')}": v for k, v in losses.items()}},
        producer=producer, inputs=inputs)
    summary = {"name": job["name"], "kind": job["kind"], "model": res["kind"], "cluster": job.get("cluster"),
               "clusters": job.get("clusters"), "n_train": res["n_train"], "steps": res["steps"],
               "step_budget": job["steps"], "seconds": round(res["seconds"], 3), "wall_seconds": round(wall, 3),
               "resumed_from": res["resumed_from"], "losses": losses, "artifact_id": art.id,
               "dir": str(out_dir), "generator": str(gen),
               "samples": str(res["samples"][-1]) if res["samples"] else _last_sample(out_dir),
               "loss_curve": str(res["loss_curve"]) if res["loss_curve"] else None,
               "device": str(tcfg.device or _device_name()), "finished_at": utc_now()}
    atomic_write_json(out_dir / "model.json", summary)
    return summary


def _last_sample(out_dir: Path) -> str | None:
    grids = sorted((out_dir / "samples").glob("step-*.png"))
    return str(grids[-1]) if grids else None


def _device_name() -> str:
    from cci_core.common.device import pick_device
    return str(pick_device(None))


def finish_training(store: Store, plan: dict, results: list[dict]) -> dict:
    """Write ``models/training.json`` and point run.json at it; returns the summary."""
    order = {j["name"]: i for i, j in enumerate(plan["jobs"])}
    results = sorted(results, key=lambda r: order.get(r["name"], len(order)))
    path = Path(plan["run_dir"]) / "models" / "training.json"
    # models an earlier `cci train` made and this one did not touch (e.g. the baseline after a
    # re-run with --no-baseline, or per-cluster models beside a later conditional GAN) stay listed
    kept = []
    if path.exists():
        names = {r["name"] for r in results}
        kept = [{**m, "from_earlier_run": True} for m in read_json(path).get("models", [])
                if m["name"] not in names and (Path(m["dir"]) / "generator.safetensors").exists()]
    results = results + kept
    summary = {"run_id": plan["run_id"], "run_dir": plan["run_dir"], "corpus": plan["corpus"],
               "corpus_version": plan["corpus_version"], "params": plan["params"],
               "mode": plan["params"]["mode"], "model": plan["params"]["model"],
               "trained_clusters": plan["trained_clusters"], "skipped": plan["skipped"],
               "total_steps": plan["total_steps"], "models": results,
               "model_artifact_ids": {r["name"]: r["artifact_id"] for r in results},
               "training_report": str(path), "finished_at": utc_now()}
    atomic_write_json(path, summary)
    update_run(store, plan["run_id"], training={"report": str(path), "mode": summary["mode"],
                                                  "model": summary["model"],
                                                  "model_artifact_ids": summary["model_artifact_ids"],
                                                  "finished_at": summary["finished_at"]})
    return summary


def train_local(store: Store, run_id: str, params: TrainParams) -> dict:
    """Every training job in this process, in order (what the train flow does on Dask)."""
    plan = plan_training(store, run_id, params)
    return finish_training(store, plan, [train_job(store, plan, job) for job in plan["jobs"]])


# ----------------------------------------------------------------------------- evaluation

def plan_evaluation(store: Store, run_id: str, params: EvalParams) -> dict:
    """Check an evaluation request (the run, its trained models) and group the models."""
    params.validate()
    run = finished_run(store, run_id)
    path = store.run_dir(run_id) / "models" / "training.json"
    if not path.exists():
        raise ValueError(f"run {run_id!r} has no trained models yet; run `cci train {run_id}` first")
    training = read_json(path)
    groups: dict[str, dict] = {}
    for m in training["models"]:
        if not (Path(m["dir"]) / "generator.safetensors").exists():
            raise ValueError(f"model {m['name']} of run {run_id!r} has no generator in {m['dir']}; "
                             f"run `cci train {run_id}` again to finish it")
        group = {"cluster": "per_cluster"}.get(m["kind"], m["kind"])
        g = groups.setdefault(group, {"group": group, "model": m["model"], "models": []})
        g["models"].append({"name": m["name"], "cluster": m.get("cluster"), "clusters": m.get("clusters"),
                            "dir": m["dir"], "artifact_id": m["artifact_id"], "steps": m["steps"]})
    order = ["per_cluster", "conditional", "baseline"]
    corpus = open_corpus(store, run["corpus"], run["corpus_version"])
    made_for = sorted({k for g in groups.values() if g["group"] != "baseline" for m in g["models"]
                       for k in ([m["cluster"]] if m["cluster"] is not None else m["clusters"] or [])})
    return {"run_id": run_id, "store": str(store.root), "run_dir": str(store.run_dir(run_id)),
            "eval_dir": str(store.run_dir(run_id) / "reports" / "eval"),
            "corpus": run["corpus"], "corpus_version": run["corpus_version"],
            "corpus_artifact_id": run["corpus_artifact_id"],
            "clustering_artifact_id": run["clustering"]["clustering_artifact_id"],
            "n_rows": run["n_rows"], "shape": list(run["shape"]), "n_clusters": len(run["partitions"]),
            "partitions": [{"cluster": p["cluster"], "count": p["count"]} for p in run["partitions"]],
            "trained_clusters": made_for or training["trained_clusters"],
            "skipped": [x for x in training["skipped"] if x["cluster"] not in made_for],
            "training": {k: training[k] for k in ("mode", "model", "total_steps", "params")},
            "has_labels": corpus.labels() is not None, "classifier": run.get("classifier"),
            "classifier_artifact_id": run.get("classifier_artifact_id"),
            "params": asdict(params), "groups": [groups[g] for g in order if g in groups]}


def _sample(rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(rows) <= n:
        return np.sort(rows)
    return np.sort(np.random.default_rng(seed).choice(rows, n, replace=False))


def _batched(fn, images: np.ndarray, bs: int = 512) -> np.ndarray:
    return np.concatenate([np.asarray(fn(images[i:i + bs])) for i in range(0, len(images), bs)])


def _find_artifact(store: Store, kind: str, uri: str):
    for art in lineage_store(store).list(kind=kind):
        if Path(art.uri).resolve() == Path(uri).resolve():
            return art
    return None


def _train_cnn(store: Store, plan: dict, directory: Path, images: np.ndarray, labels: np.ndarray,
               n_classes: int, meta: dict, inputs: list, name: str, producer: dict | None):
    """Train a ReferenceCNN, save it (safetensors + JSON), record a ``reference_cnn`` artifact."""
    from cci_core.generate.gen_metrics import prob_fn, train_reference_cnn
    from cci_core.store.weights import save_weights
    p = plan["params"]
    t0 = time.perf_counter()
    model = train_reference_cnn(images, labels, n_classes, steps=p["ref_steps"], seed=p["seed"],
                                device=p["device"])
    acc = float((_batched(prob_fn(model), images).argmax(1) == labels).mean())
    config = {"channels": int(images.shape[3]), "n_classes": n_classes, "embed_dim": model.head.in_features,
              "steps": p["ref_steps"], "seed": p["seed"], "n_train": int(len(images)), "train_acc": acc,
              "seconds": round(time.perf_counter() - t0, 3), **meta}
    path = save_weights(directory, model.state_dict(), config, name="model")
    files = [path, path.with_suffix(".json")]
    art = lineage_store(store).record(
        "reference_cnn", name, str(directory), hash_files(files), size=path.stat().st_size,
        params={k: v for k, v in config.items() if k not in ("train_acc", "seconds")},
        metrics={"train_acc": acc, "n_train": int(len(images))}, producer=producer, inputs=inputs)
    return model, art, config


def _load_cnn(directory: Path, device: str | None):
    from cci_core.common.device import pick_device
    from cci_core.generate.gen_metrics import ReferenceCNN
    from cci_core.store.weights import load_weights
    tensors, config = load_weights(directory, "model")
    model = ReferenceCNN(config["channels"], config["n_classes"], config["embed_dim"])
    model.load_state_dict(tensors)
    return model.to(pick_device(device)).eval(), config


def _space_model(space: dict, device: str | None):
    """(model, value_range) of a feature space described in the refs."""
    if space["source"] == "cci-classifier":
        from cci_core.refine.refine import load_classifier
        return load_classifier(space["path"], device), (0.0, 1.0)
    return _load_cnn(Path(space["path"]), device)[0], (-1.0, 1.0)


def space_fns(space: dict, device: str | None):
    from cci_core.generate.gen_metrics import feature_fn, prob_fn
    model, vr = _space_model(space, device)
    return feature_fn(model, "embed", vr), prob_fn(model, vr)


def prepare_references(store: Store, plan: dict, producer: dict | None = None) -> dict:
    """The feature networks and the real images' features every group is measured against.

    - ``classifier``: the run's CCI classifier (``run.json["classifier"]``), or, when the
      run has none, a reference CNN trained on the run's cluster labels
      (``runs/<run-id>/cluster-cnn/``) standing in for it.
    - ``reference`` (only when the corpus has true labels): a reference CNN trained on the
      true labels, once per corpus version (reused from the lineage store when one exists),
      saved in ``runs/<run-id>/reference-cnn/`` otherwise.

    Real images: a seeded sample of up to ``max_real`` rows per cluster and of up to
    ``max_real`` x clusters rows of the whole corpus; their features go to ``reports/eval/``.
    """
    p, run_dir, eval_dir = plan["params"], Path(plan["run_dir"]), Path(plan["eval_dir"])
    eval_dir.mkdir(parents=True, exist_ok=True)
    corpus = open_corpus(store, plan["corpus"], plan["corpus_version"])
    labels = run_labels(plan)
    lin = lineage_store(store)
    spaces: dict[str, dict] = {}
    notes: list[str] = []

    # -- the cluster classifier
    if plan.get("classifier"):
        path = str(Path(plan["classifier"]))
        art_id = plan.get("classifier_artifact_id")
        if not art_id:
            art = _find_artifact(store, "classifier", path)
            if art is None:
                files = [Path(path) / "classifier.safetensors", Path(path) / "classifier.json"]
                art = lin.record("classifier", f"{plan['run_id']}/classifier", path, hash_files(files),
                                 size=files[0].stat().st_size, params={"run_id": plan["run_id"]},
                                 producer=producer, inputs=[(plan["clustering_artifact_id"], "clustering")])
            art_id = art.id
        spaces["classifier"] = {"source": "cci-classifier", "path": path, "artifact_id": art_id,
                                "labels": "clusters",
                                "note": "the run's CCI classifier (embedding features and cluster predictions)"}
    else:
        cdir = run_dir / "cluster-cnn"
        if (cdir / "model.safetensors").exists() and (art := _find_artifact(store, "reference_cnn", str(cdir))):
            config = _load_cnn(cdir, p["device"])[1]
        else:
            keep = np.flatnonzero(labels >= 0)
            keep = _sample(keep, p["ref_rows"], p["seed"])
            _, art, config = _train_cnn(
                store, plan, cdir, corpus.read_images(keep), labels[keep].astype(np.int64), plan["n_clusters"],
                {"labels": "clusters", "run_id": plan["run_id"], "corpus_artifact_id": plan["corpus_artifact_id"]},
                [(plan["clustering_artifact_id"], "clustering"), (plan["corpus_artifact_id"], "corpus")],
                f"{plan['run_id']}/cluster-cnn", producer)
        spaces["classifier"] = {"source": "cluster-cnn", "path": str(cdir), "artifact_id": art.id,
                                "labels": "clusters", "train_acc": config["train_acc"],
                                "note": "run has no CCI classifier: a reference CNN trained on the run's "
                                        "cluster labels stands in for it"}
        notes.append(spaces["classifier"]["note"])

    # -- the true-label reference CNN, once per corpus version
    if plan["has_labels"]:
        found = None
        for art in lin.list(kind="reference_cnn"):
            if (art.params.get("labels") == "true" and art.params.get("corpus_artifact_id") == plan["corpus_artifact_id"]
                    and art.params.get("steps") == p["ref_steps"] and (Path(art.uri) / "model.safetensors").exists()):
                found = art
                break
        if found is not None:
            art, config = found, _load_cnn(Path(found.uri), p["device"])[1]
        else:
            y = np.asarray(corpus.labels()).astype(str)
            classes, codes = np.unique(y, return_inverse=True)
            keep = _sample(np.arange(corpus.n_rows), p["ref_rows"], p["seed"])
            _, art, config = _train_cnn(
                store, plan, run_dir / "reference-cnn", corpus.read_images(keep), codes[keep].astype(np.int64),
                len(classes), {"labels": "true", "classes": classes.tolist(),
                               "corpus_artifact_id": plan["corpus_artifact_id"]},
                [(plan["corpus_artifact_id"], "corpus")], f"{plan['corpus']}@{plan['corpus_version']}/reference-cnn",
                producer)
        spaces["reference"] = {"source": "reference-cnn", "path": art.uri, "artifact_id": art.id,
                               "labels": "true", "train_acc": config["train_acc"],
                               "note": "a reference CNN trained on the corpus's true labels"}

    # -- the real images: per cluster and over the whole corpus
    per_cluster = {k: _sample(np.flatnonzero(labels == k), p["max_real"], p["seed"] + 1 + k)
                   for k in range(plan["n_clusters"])}
    overall = _sample(np.arange(corpus.n_rows), p["max_real"] * plan["n_clusters"], p["seed"])
    union = np.unique(np.concatenate([overall, *per_cluster.values()]))
    images = corpus.read_images(union)
    np.save(eval_dir / "real-rows.npy", union)
    real = {"rows": str(eval_dir / "real-rows.npy"), "n_overall": int(len(overall)),
            "n_per_cluster": {str(k): int(len(v)) for k, v in per_cluster.items()}}
    masks = {"overall": np.isin(union, overall),
             **{str(k): np.isin(union, v) for k, v in per_cluster.items()}}
    np.savez(eval_dir / "real-masks.npz", **masks)
    real["masks"] = str(eval_dir / "real-masks.npz")
    floor, real_fidelity = {}, {}
    from cci_core.generate.gen_metrics import evaluate_features
    for name, space in spaces.items():
        feats, probs = space_fns(space, p["device"])
        f, pr = _batched(feats, images), _batched(probs, images)
        np.save(eval_dir / f"real-{name}.npy", f.astype(np.float32))
        space["features"] = str(eval_dir / f"real-{name}.npy")
        space["dim"] = int(f.shape[1])
        # the floor: two disjoint halves of the real whole-corpus sample
        idx = np.flatnonzero(masks["overall"])
        perm = np.random.default_rng(p["seed"]).permutation(idx)
        a, b = perm[: len(perm) // 2], perm[len(perm) // 2:]
        if min(len(a), len(b)) > p["k"] + 1:
            floor[name] = evaluate_features(f[a], f[b], pr[b], k=p["k"], kid_subsets=p["kid_subsets"],
                                            kid_subset_size=p["kid_subset_size"], is_splits=p["is_splits"],
                                            seed=p["seed"])
        if name == "classifier":  # how often the classifier gives real cluster-k images cluster k
            lab = labels[union]
            ok = lab >= 0
            real_fidelity = {"fidelity": float((pr[ok].argmax(1) == lab[ok]).mean()), "n": int(ok.sum())}
    refs = {"spaces": spaces, "real": real, "floor": floor, "real_fidelity": real_fidelity, "notes": notes}
    atomic_write_json(eval_dir / "references.json", refs)
    return refs


def mixture_counts(sizes: dict[int, int], total: int, minimum: int) -> dict[int, int]:
    """Share ``total`` draws among clusters in proportion to ``sizes`` (largest remainder),
    at least ``minimum`` each: a set of per-cluster generators then samples the corpus's own
    mixture, which is what the whole-corpus measures compare against."""
    ids = sorted(sizes)
    w = np.array([sizes[k] for k in ids], np.float64)
    raw = w / w.sum() * total
    n = np.floor(raw).astype(np.int64)
    n[np.argsort(n - raw)[: total - int(n.sum())]] += 1
    return {k: int(max(c, minimum)) for k, c in zip(ids, n)}


def _generate_group(plan: dict, group: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """Generated images of one group and the cluster each was made for (None for the baseline)."""
    from cci_core.generate.train_generator import generate, load_generator
    p = plan["params"]
    device = p["device"]
    total = p["samples"] * len(plan["trained_clusters"])
    sizes = {q["cluster"]: q["count"] for q in plan["partitions"] if q["cluster"] in plan["trained_clusters"]}
    n = mixture_counts(sizes, total, p["k"] + 2)
    if group["group"] == "per_cluster":
        imgs, intended = [], []
        for m in sorted(group["models"], key=lambda m: m["cluster"]):
            imgs.append(generate(load_generator(m["dir"], device), n[m["cluster"]], seed=p["seed"] + 1 + m["cluster"]))
            intended.append(np.full(n[m["cluster"]], m["cluster"], np.int64))
        return np.concatenate(imgs), np.concatenate(intended)
    m = group["models"][0]
    if group["group"] == "conditional":
        intended = np.concatenate([np.full(n[k], k, np.int64) for k in m["clusters"]])
        return generate(load_generator(m["dir"], device), len(intended), labels=intended, seed=p["seed"]), intended
    return generate(load_generator(m["dir"], device), total, seed=p["seed"]), None


def evaluate_group(store: Store, plan: dict, refs: dict, group: dict) -> dict:
    """Generate ``samples`` images per cluster with one group of models and measure them.

    Per feature space: the whole generated set against the real whole-corpus sample
    (FD, KID, precision/recall/density/coverage, IS analogue; fidelity when images were made
    for a cluster), and per cluster the images made for cluster k (for the baseline: those the
    classifier assigns to k) against the real images of cluster k. Every figure carries its
    sample sizes (``n_real``, ``n_fake``, ...).
    """
    from cci_core.common.imagegrid import make_grid, save_png
    from cci_core.generate.gen_metrics import cluster_fidelity, evaluate_features
    p, eval_dir = plan["params"], Path(plan["eval_dir"])
    t0 = time.perf_counter()
    fakes, intended = _generate_group(plan, group)
    # a grid: up to 8 images per cluster, one row per cluster (the baseline: 8 per row)
    if intended is not None:
        pick = np.concatenate([np.flatnonzero(intended == k)[:8] for k in np.unique(intended)])
    else:
        pick = np.arange(min(len(fakes), 8 * max(1, len(plan["trained_clusters"]))))
    grid = save_png(make_grid(fakes[pick], ncols=8), eval_dir / f"generated-{group['group']}.png", scale=2)
    masks = np.load(refs["real"]["masks"])
    kw = dict(k=p["k"], kid_subsets=p["kid_subsets"], kid_subset_size=p["kid_subset_size"],
              is_splits=p["is_splits"], seed=p["seed"])
    reports, per_cluster, assigned = {}, {}, None
    for name, space in refs["spaces"].items():
        feats, probs = space_fns(space, p["device"])
        fr = np.load(space["features"]).astype(np.float64)
        ff, pf = _batched(feats, fakes), _batched(probs, fakes)
        is_cluster_space = space["labels"] == "clusters"
        rep = evaluate_features(fr[masks["overall"]], ff, pf, intended if is_cluster_space else None, **kw)
        rep.update(features=name, feature_dim=int(ff.shape[1]))
        reports[name] = rep
        if is_cluster_space and assigned is None:
            assigned = pf.argmax(1)
        per_cluster[name] = {}
        which = intended if intended is not None else assigned
        for k in plan["trained_clusters"]:
            sel = np.flatnonzero(which == k) if which is not None else np.zeros(0, int)
            real_k = fr[masks[str(k)]]
            entry = {"n_real": int(len(real_k)), "n_fake": int(len(sel)),
                     "made_for_cluster": intended is not None}
            if len(sel) > p["k"] + 1 and len(real_k) > p["k"] + 1:
                r = evaluate_features(real_k, ff[sel], None, None, **{**kw, "kid_subsets": min(kw["kid_subsets"], 20)})
                entry.update({m: r[m] for m in ("fid", "kid", "kid_std", "precision", "recall", "density",
                                                 "coverage", "kid_subset_size")})
                if is_cluster_space and intended is not None:
                    entry["fidelity"] = cluster_fidelity(pf[sel].argmax(1), intended[sel])["fidelity"]
            else:
                entry["skipped"] = (f"{len(sel)} generated / {len(real_k)} real images; "
                                    f"more than k+1={p['k'] + 1} of each are needed")
            per_cluster[name][str(k)] = entry
        if intended is None and assigned is not None and is_cluster_space:
            counts = np.bincount(assigned, minlength=plan["n_clusters"])
            rep["assigned_per_cluster"] = {str(k): int(c) for k, c in enumerate(counts)}
    result = {"group": group["group"], "model": group["model"], "n_fake": int(len(fakes)),
              "samples_per_cluster": p["samples"], "shape": list(fakes.shape[1:]), "dtype": str(fakes.dtype),
              "pixel_range": [int(fakes.min()), int(fakes.max())],
              "models": {m["name"]: m["artifact_id"] for m in group["models"]},
              "reports": reports, "per_cluster": per_cluster, "grid": str(grid),
              "seconds": round(time.perf_counter() - t0, 3)}
    atomic_write_json(eval_dir / f"{group['group']}.json", result)
    return result


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def write_report(store: Store, plan: dict, refs: dict, results: list[dict], producer: dict | None = None) -> dict:
    """Put the groups side by side, say which wins each measure, write
    ``reports/generation.json`` and record it as a ``report`` artifact."""
    from cci_core.generate.gen_metrics import compare_reports, comparison_table
    results = sorted(results, key=lambda r: [g["group"] for g in plan["groups"]].index(r["group"]))
    groups = [r["group"] for r in results]
    reports = {space: {r["group"]: r["reports"][space] for r in results} for space in refs["spaces"]}
    comparison, head_to_head, wins, per_cluster_winners = {}, {}, {}, {}
    md = [f"# Generation report: run `{plan['run_id']}`",
          f"corpus {plan['corpus']} v{plan['corpus_version']}; {plan['params']['samples']} generated images "
          f"per cluster; clusters trained: {plan['trained_clusters']}"]
    if plan["skipped"]:
        md.append("skipped clusters: " + "; ".join(f"{s['cluster']} ({s['reason']})" for s in plan["skipped"]))
    for space, reps in reports.items():
        info = refs["spaces"][space]
        md.append(f"\n## features: {space} ({info['note']})\n")
        if len(reps) >= 2:
            comparison[space] = compare_reports(reps)
            wins[space] = {g: sum(c["winner"] == g for c in comparison[space].values()) for g in groups}
            md.append(comparison_table(comparison[space]))
            if "baseline" in reps:
                head_to_head[space] = {g: {m: c["winner"] for m, c in compare_reports(
                    {g: reps[g], "baseline": reps["baseline"]}).items()} for g in groups if g != "baseline"}
            per_cluster_winners[space] = {}
            for k in map(str, plan["trained_clusters"]):
                cands = {r["group"]: r["per_cluster"][space][k] for r in results if "fid" in r["per_cluster"][space][k]}
                if len(cands) >= 2:
                    per_cluster_winners[space][k] = {m: c["winner"] for m, c in compare_reports(
                        cands, metrics=("fid", "kid", "precision", "recall", "density", "coverage")).items()}
        else:
            md.append("(one model group only: nothing to compare)")
        fid_line = [f"{g} {r['fidelity']:.3f}" for g, r in reps.items() if _finite(r.get("fidelity"))]
        if fid_line:
            md.append(f"\nfidelity (share of images made for cluster k that the classifier assigns to k; "
                      f"chance {1 / plan['n_clusters']:.3f}): " + ", ".join(fid_line))
        md.append("\nsample sizes: " + "; ".join(
            f"{g}: n_real={r['n_real']}, n_fake={r['n_fake']}, k={r['k']}, kid {r['kid_subsets']}x"
            f"{r['kid_subset_size']}, is_splits={r.get('is_splits')}" for g, r in reps.items()))
    if refs["notes"]:
        md.append("\nnotes: " + " ".join(refs["notes"]))
    report = {"run_id": plan["run_id"], "corpus": plan["corpus"], "corpus_version": plan["corpus_version"],
              "created_at": utc_now(), "samples_per_cluster": plan["params"]["samples"], "params": plan["params"],
              "training": plan["training"], "trained_clusters": plan["trained_clusters"], "skipped": plan["skipped"],
              "groups": groups, "feature_spaces": {s: {k: v for k, v in i.items() if k != "features"}
                                                   for s, i in refs["spaces"].items()},
              "reports": reports, "per_cluster": {space: {r["group"]: r["per_cluster"][space] for r in results}
                                                  for space in refs["spaces"]},
              "comparison": comparison, "head_to_head": head_to_head, "wins": wins,
              "per_cluster_winners": per_cluster_winners, "floor": refs["floor"],
              "real_fidelity": refs["real_fidelity"], "notes": refs["notes"],
              "models": {r["group"]: r["models"] for r in results},
              "grids": {r["group"]: r["grid"] for r in results},
              "generated": {r["group"]: {"n": r["n_fake"], "shape": r["shape"], "dtype": r["dtype"],
                                         "pixel_range": r["pixel_range"]} for r in results},
              "markdown": "\n".join(md)}
    path = Path(plan["run_dir"]) / "reports" / "generation.json"
    atomic_write_json(path, report)
    headline = {f"{g}_{m}": reports["classifier"][g][m] for g in groups for m in HEADLINE
                if _finite(reports["classifier"][g].get(m))}
    inputs = [(aid, "model") for r in results for aid in r["models"].values()]
    inputs += [(s["artifact_id"], "features") for s in refs["spaces"].values()]
    art = lineage_store(store).record(
        "report", f"{plan['run_id']}/generation", str(path), hash_files([path]), size=path.stat().st_size,
        params={"run_id": plan["run_id"], **plan["params"], "groups": groups}, metrics=headline,
        producer=producer, inputs=inputs)
    update_run(store, plan["run_id"], evaluation={"report": str(path), "report_artifact_id": art.id,
                                                    "finished_at": report["created_at"]})
    return {"run_id": plan["run_id"], "run_dir": plan["run_dir"], "report": str(path),
            "report_artifact_id": art.id, "groups": groups, "comparison": comparison, "wins": wins,
            "head_to_head": head_to_head, "headline": {s: reports[s] for s in reports},
            "feature_spaces": report["feature_spaces"], "skipped": plan["skipped"], "grids": report["grids"],
            "floor": refs["floor"], "real_fidelity": refs["real_fidelity"], "notes": refs["notes"],
            "markdown": report["markdown"]}


def evaluate_local(store: Store, run_id: str, params: EvalParams | None = None) -> dict:
    """Every evaluation step in this process (what the evaluate flow does on Dask)."""
    plan = plan_evaluation(store, run_id, params or EvalParams())
    refs = prepare_references(store, plan)
    return write_report(store, plan, refs, [evaluate_group(store, plan, refs, g) for g in plan["groups"]])


def train_params_fields() -> set[str]:
    return {f.name for f in fields(TrainParams)}


def eval_params_fields() -> set[str]:
    return {f.name for f in fields(EvalParams)}
