"""The whole pipeline as one Prefect flow of subflows:
ingest → cluster → refine → train → evaluate → generate (publish).

Resumable: every stage's output has an id derived from its inputs and parameters (the corpus
version's lineage id and the clustering parameters name the run; the refined run is named
after it; training resumes from checkpoints and skips finished clusters; a dataset version
whose card shows the same run and parameters is reused), so re-running after an interruption,
or with nothing new, redoes only what is missing. The generators are evaluated before their images are
published, so the dataset card carries the evaluation (FD, coverage, the floor, per cluster).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from cci_core.cluster.explore import explorer_path
from cci_core.cluster.records import ClusterParams
from cci_core.generate.settings import EvalParams, TrainParams, eval_params_fields, train_params_fields
from cci_core.refine.choose_k import START_K
from cci_core.refine.config import RefineConfig
from cci_core.refine.refine_run import config_from_options
from cci_core.store.corpus import open_corpus
from cci_core.store.datasets import UnknownDatasetError, open_dataset
from cci_core.store.runs import read_run
from cci_core.store.store import Store
from flows.cluster import cluster_flow
from flows.common import artifact_key, checked_options, fig, file_link, metrics_text, run_link
from flows.generate import generate_flow
from flows.ingest import ingest_flow
from flows.naming import call_tagged
from flows.profiles import resolve_profile
from flows.refine import refine_flow
from flows.runtime import on_flow_cluster
from flows.settings import (
    ClusterSettings,
    EvaluateSettings,
    GenerateSettings,
    IngestSettings,
    RefineSettings,
    TrainSettings,
)
from flows.train import evaluate_flow, train_flow


def stage_id(*parts) -> str:
    """8 hex digits naming a stage's output by everything it depends on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _complete(store: Store, run_id: str) -> bool:
    try:
        return read_run(store, run_id).get("status") == "complete"
    except LookupError:
        return False


def _reusable_dataset(store: Store, dataset: str, run_id: str, params: dict, model_ids: set[str]):
    """The latest version of DATASET when it was made by these very models with these parameters."""
    try:
        ds = open_dataset(dataset, store=store)
    except UnknownDatasetError:
        return None
    card = ds.card
    same = (card.get("run_id") == run_id and set(card.get("models", {}).values()) <= model_ids
            and all(card.get("params", {}).get(k) == v for k, v in params.items()))
    return ds if same else None


STAGES = ("ingest", "cluster", "refine", "train", "evaluate", "generate")


class Stages:
    """The pipeline's six stages: a progress artifact "stage n of 6", each subflow run on the
    parent's Dask cluster with its own name and tags, and the id of the flow run of each."""

    def __init__(self, corpus: str):
        self.corpus = corpus
        self.flow_runs: dict[str, str] = {}
        self.notes: dict[str, str] = {}
        self.progress = create_progress_artifact(0.0, key=artifact_key("pipeline-progress", corpus),
                                                 description=f"pipeline {corpus}: stage 1 of 6 (ingest)")

    def _advance(self, stage: str, note: str) -> None:
        n = STAGES.index(stage) + 1
        nxt = f", next: {STAGES[n]}" if n < len(STAGES) else ""
        update_progress_artifact(self.progress, 100.0 * n / len(STAGES),
                                 description=f"pipeline {self.corpus}: stage {n} of 6 ({stage}) {note}{nxt}")

    def run(self, stage: str, subflow, *args, **kwargs):
        n = STAGES.index(stage) + 1
        update_progress_artifact(self.progress, 100.0 * (n - 1) / len(STAGES),
                                 description=f"pipeline {self.corpus}: stage {n} of 6 ({stage}) running")
        state = call_tagged(on_flow_cluster(subflow), *args, return_state=True, **kwargs)
        self.flow_runs[stage] = str(state.state_details.flow_run_id)
        result = state.result()
        self._advance(stage, "done")
        return result

    def skip(self, stage: str, note: str) -> None:
        self.notes[stage] = note
        self._advance(stage, note)

    def link(self, stage: str) -> str:
        if stage in self.flow_runs:
            return run_link(self.flow_runs[stage], stage)
        return f"{stage} ({self.notes.get(stage, 'not run')})"


def _summary_markdown(store: Store, s: dict, stages: Stages, training: dict, evaluation: dict) -> str:
    """The pipeline's summary: each stage's headline figures, its flow run and its output."""
    ds = s["dataset"]
    n_models = len(training.get("models", []))
    gen = ""
    for space, groups in (evaluation.get("headline") or {}).items():
        gen = "; ".join(f"{g}: {metrics_text(m, ('fid', 'kid', 'precision', 'recall', 'coverage'))}"
                        for g, m in groups.items())
        gen = f"{space} features — {gen}"
        break
    rows = [
        ("ingest", f"corpus `{s['corpus']}` v{s['corpus_version']}: {s['ingest_added']} new images",
         file_link(store.corpus_dir(s["corpus"]), "corpus folder")),
        ("cluster", f"run `{s['cluster_run']}`: {metrics_text(s['clustering_metrics']) or 'no labels to score'}",
         file_link(store.run_dir(s["cluster_run"]), "run folder")),
        ("refine", f"run `{s['refined_run']}`: {metrics_text(s['refined_metrics']) or 'no labels to score'}",
         file_link(store.run_dir(s["refined_run"]) / "partitions", "partitions")
         if (store.run_dir(s["refined_run"]) / "partitions").exists()
         else file_link(store.run_dir(s["refined_run"]), "run folder")),
        ("train", f"{n_models} generators", file_link(store.run_dir(s["refined_run"]) / "models", "models")),
        ("evaluate", gen or "see the report", file_link(s["evaluation_report"], "report")
         if s.get("evaluation_report") else ""),
        ("generate", f"dataset `{ds['dataset']}` v{ds['version']}: {ds['n_images']} images, {ds['accepted']} "
                     f"accepted ({fig(ds['accepted'] / max(ds['n_images'], 1))})",
         file_link(ds["path"], "dataset version")),
    ]
    table = "\n".join(f"| {stages.link(st)} | {what} | {where} |" for st, what, where in rows)
    return (f"# Pipeline on `{s['corpus']}` v{s['corpus_version']}\n\n| stage (flow run) | headline | output |\n"
            f"|---|---|---|\n{table}\n\nCluster explorer of the refined run (map, centre and doubted images, real vs "
            f"generated with FD and coverage): {file_link(s['explorer'], 'explore.html')}\n\n"
            f"{s['profile']}\n\nstore: {file_link(s['store'])}\n\n"
            f"Lineage of the dataset (self-hosted Prefect has no Assets page): "
            f"`cci lineage show {ds['artifact_id']}`\n")


@flow(name="cci-pipeline", log_prints=True, flow_run_name="pipeline {corpus} from {source}")
def pipeline_flow(source: str = "builtin:digits", corpus: str = "digits28", store_root: str | None = None,
                  size: tuple[int, int] | None = (28, 28), channels: int | None = 1, k: int | str | None = None,
                  n_components: int = 50, profile: str = "quick", refine_rounds: int | None = None,
                  refine_steps: int | None = None, refine_options: dict | None = None, model: str = "gan",
                  train_steps: int | None = None,
                  min_size: int = 50, per_cluster: int = 64, dataset: str | None = None,
                  eval_samples: int = 200, eval_options: dict | None = None, train_options: dict | None = None,
                  seed: int = 0) -> dict:
    """Run every stage on SOURCE; each stage is its own flow run (a subflow) in the Prefect UI.

    The parameters stay plain JSON values (a deployment's, given as ``--param k=4``); each stage's
    settings (:mod:`flows.settings`) are built from them here, once, when the stage is reached.
    ``k`` None: cluster at :data:`START_K`, then the refine stage chooses k (``RefineConfig.k = "auto"``,
    unless ``refine_options`` set ``k`` or a ``start`` that keeps the given clusters).
    ``profile`` (:mod:`flows.profiles`): quick or full; ``refine_rounds``, ``refine_steps`` and
    ``train_steps`` given (not None) override it.
    """
    log = get_run_logger()
    store = Store(store_root).ensure()
    root = str(store.root)
    dataset = dataset or f"{corpus}-generated"
    stages = Stages(corpus)
    budget = resolve_profile(profile, refine_rounds, refine_steps, train_steps)
    log.info("%s", budget.line())

    ing = stages.run("ingest", ingest_flow, IngestSettings(source, corpus, store_root=root, size=size, channels=channels))
    c = open_corpus(store, corpus)
    params = ClusterParams(k=START_K if k is None else k, n_components=n_components, seed=seed)
    run_id = f"{corpus}-v{c.version}-{stage_id(c.artifact_id, asdict(params))}"
    if _complete(store, run_id):
        log.info("Clustering %s already done for corpus %s v%d with these parameters: reusing it",
                 run_id, corpus, c.version)
        stages.skip("cluster", "reused")
    else:
        stages.run("cluster", cluster_flow, ClusterSettings(corpus, store_root=root, params=params, version=c.version,
                                                            run_id=run_id))

    refine_opts = {"rounds": budget.refine_rounds, "steps": budget.refine_steps, "warmup_steps": budget.warmup_steps,
                   "seed": seed, "batch_size": budget.batch_size, **(refine_options or {})}
    if k is None and refine_opts.get("start", RefineConfig.start) != "given":
        refine_opts.setdefault("k", "auto")
    refined = f"{run_id}-r{stage_id(refine_opts)}"
    if _complete(store, refined):
        log.info("Refined run %s already done: reusing it", refined)
        stages.skip("refine", "reused")
    else:
        stages.run("refine", refine_flow, RefineSettings(run_id, store_root=root, config=config_from_options(refine_opts),
                                                         new_run_id=refined))

    train_options = dict(train_options or {})
    gpu_resource = train_options.pop("gpu_resource", None)
    train_params = TrainParams(model=model, steps=budget.train_steps, min_size=min_size, seed=seed,
                               **checked_options("training", train_options, train_params_fields()))
    training = stages.run("train", train_flow, TrainSettings(refined, store_root=root, params=train_params,
                                                             gpu_resource=gpu_resource))
    eval_params = EvalParams(samples=eval_samples, **checked_options("evaluation", eval_options, eval_params_fields()))
    evaluation = stages.run("evaluate", evaluate_flow, EvaluateSettings(refined, store_root=root, params=eval_params))
    gen_params = {"per_cluster": per_cluster, "seed": seed}
    reuse = _reusable_dataset(store, dataset, refined, gen_params, set(training["model_artifact_ids"].values()))
    if reuse is not None:
        log.info("Dataset %s v%d already holds this run's images: not republished", dataset, reuse.version)
        published = {"dataset": dataset, "version": reuse.version, "path": str(reuse.path),
                     "artifact_id": reuse.card["lineage"]["artifact_id"], "n_images": len(reuse),
                     "accepted": int(reuse.manifest["accepted"].sum()), "reused": True}
        stages.skip("generate", "reused")
    else:
        published = stages.run("generate", generate_flow, GenerateSettings(refined, dataset, store_root=root,
                                                                           per_cluster=per_cluster, seed=seed))

    run = read_run(store, refined)
    summary = {"corpus": corpus, "corpus_version": c.version, "corpus_artifact_id": c.artifact_id,
               "ingest_added": ing["added"], "cluster_run": run_id, "refined_run": refined,
               "clustering_metrics": read_run(store, run_id)["clustering"]["metrics"],
               "refined_metrics": run["clustering"]["metrics"], "refined_k_choice": run["clustering"].get("k_choice"),
               "dataset": published,
               "evaluation_report": evaluation.get("report"), "explorer": str(explorer_path(store.run_dir(refined))),
               "store": root, "profile": budget.line()}
    create_markdown_artifact(key=artifact_key("pipeline", corpus), description=f"pipeline on {corpus}",
                             markdown=_summary_markdown(store, summary, stages, training, evaluation))
    return summary
