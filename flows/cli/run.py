"""`cci run` (the whole pipeline) and `cci refresh` (what is new, against a served run)."""
from __future__ import annotations

import os
from dataclasses import asdict
from typing import Optional

import typer

from flows.cli.common import err, lit, name_values, out, parse_k, parse_size, print_json, read_store, run_flow, run_guarded
from flows.cli.options import DaskOpt, JsonOpt, QuietOpt, StoreOpt, VerboseOpt, WorkersOpt
from flows.profiles import PROFILES, resolve_profile

QUICK, FULL = PROFILES["quick"], PROFILES["full"]


def run_pipeline(
    source: str = typer.Argument("builtin:digits", help="What to ingest (default: scikit-learn's digits, no download)."),
    corpus: str = typer.Option("digits28", "--corpus", "-c", help="Corpus name."),
    size: Optional[str] = typer.Option(
        "28x28", "--size", help="Image size HxW for the corpus: 28x28, 32x32 or 64x64, as the generators this "
                                "pipeline trains make (cci ingest, cluster, refine and predict alone take any size)."),
    channels: Optional[int] = typer.Option(1, "--channels", help="1 (gray) or 3 (RGB)."),
    k: Optional[str] = typer.Option(
        None, "--k", "-k", help="Number of clusters, or a range for the clustering stage to choose from: 5:30 or "
                                "5:30:5 (default: cluster at 10, then the refine stage chooses k among 4..20 from "
                                "its pre-trained embedding, without labels; see `cci refine --k auto`)."),
    profile: str = typer.Option(
        "quick", "--profile",
        help=f"How long the refinement and the generators train: quick (refine {QUICK.refine_rounds} round x "
             f"{QUICK.refine_steps} steps, generators {QUICK.train_steps} steps: minutes on a laptop) or full "
             f"(cci refine's defaults, {FULL.refine_rounds} rounds x {FULL.refine_steps} steps after a round 0 of "
             f"{FULL.warmup_steps}; cci train's {FULL.train_steps} generator steps). --refine-rounds, "
             "--refine-steps and --train-steps override it."),
    refine_rounds: Optional[int] = typer.Option(None, "--refine-rounds",
                                                help="CCI refinement rounds after round 0 (default: the profile's)."),
    refine_steps: Optional[int] = typer.Option(None, "--refine-steps", help="Classifier training steps per round, "
                                               "round 0 included (default: the profile's)."),
    train_steps: Optional[int] = typer.Option(None, "--train-steps",
                                              help="Generator training steps per cluster (default: the profile's)."),
    per_cluster: int = typer.Option(64, "--per-cluster", help="Images to publish per cluster."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset name (default: <corpus>-generated)."),
    seed: int = typer.Option(0, "--seed"),
    option: list[str] = typer.Option([], "--refine-set", help="Other RefineConfig fields, NAME=VALUE (repeatable)."),
    eval_set: list[str] = typer.Option([], "--eval-set", help="Evaluation settings (EvalParams fields), NAME=VALUE "
                                       "(repeatable), e.g. --eval-set ref_steps=100 --eval-set samples=50."),
    store: Optional[str] = StoreOpt, dask_address: Optional[str] = DaskOpt, workers: Optional[int] = WorkersOpt,
    as_json: bool = JsonOpt, quiet: bool = QuietOpt, verbose: bool = VerboseOpt,
):
    """The whole pipeline as one Prefect flow: ingest -> cluster -> refine -> train -> evaluate -> generate.

    The generators are cci train's default, the mode that measured best (benchmarks/generate.py): one GAN per
    cluster, fine-tuned from a shared start (a cluster-conditional GAN on the pooled partitions, half the
    step budget), beside one unconditional baseline GAN at the same total steps. They are evaluated
    before their images are published, so the dataset card holds FD, coverage, the floor and the
    per-cluster figures. Re-running it redoes only what is missing (stage outputs are named by their inputs).
    The quick profile (the default) trains briefly: minutes on a laptop; --profile full trains as
    `cci refine` and `cci train` do by default.

    Example: cci run builtin:digits -k 10 --quiet
    """
    budget = run_guarded(resolve_profile, profile, refine_rounds, refine_steps, train_steps)
    from cci_core.refine.refine_run import config_from_options
    refine_options = name_values(option, "--refine-set")
    refine_options = {key: value for key, value in asdict(run_guarded(config_from_options, refine_options)).items()
                      if key in refine_options}
    eval_options, eval_samples = _eval_options(eval_set)
    from flows.preflight import check_device, check_pipeline
    run_guarded(check_device, refine_options.get("device"))
    run_guarded(check_device, eval_options.get("device"))
    from flows.preflight import new_store
    store_obj = run_guarded(new_store, store)  # a URL: lineage database and bucket checked
    from cci_core.refine.choose_k import START_K
    k_value = parse_k(k) if k is not None else None  # None: the refine stage chooses k
    run_guarded(check_pipeline, store_obj, source, corpus, parse_size(size), channels, dataset,
                START_K if k_value is None else k_value,
                {"--refine-steps": budget.refine_steps, "--train-steps": budget.train_steps,
                 "--per-cluster": per_cluster})
    from flows.cli.output import say
    say(err, budget.line())
    from flows.server import warm
    warm_state = None if dask_address else warm(store_obj.root)
    user_api = os.environ.get("PREFECT_API_URL") or (warm_state or {}).get("api_url")  # a server that outlives the run
    from flows.pipeline import pipeline_flow  # after the checks: importing the flow (Prefect) takes seconds
    summary = run_flow(pipeline_flow, dask_address, workers,
                       source, corpus, store_root=str(store_obj.root), size=parse_size(size),
                       channels=channels, k=k_value, profile=profile, refine_rounds=refine_rounds,
                       refine_steps=refine_steps,
                       refine_options=refine_options, train_steps=train_steps, per_cluster=per_cluster,
                       dataset=dataset, seed=seed, eval_samples=eval_samples, eval_options=eval_options)
    if as_json:
        print_json(summary)
        return
    ds = summary["dataset"]
    from cci_core.refine.choose_k import choice_line

    def fmt(m):
        return "  ".join(f"{key}={m[key]:.3f}" for key in ("acc", "nmi", "ari", "silhouette") if key in m)
    out.print(f"[bold]Pipeline on {lit(corpus)}[/] v{summary['corpus_version']} ({summary['ingest_added']} new images)\n"
              f"  clustering: run {lit(summary['cluster_run'])}  {fmt(summary['clustering_metrics'])}\n"
              f"  refined:    run {lit(summary['refined_run'])}  {fmt(summary['refined_metrics'])}\n"
              + (f"  k:          {choice_line(summary['refined_k_choice'])}\n" if summary.get("refined_k_choice") else "")
              + f"  dataset:    {lit(ds['dataset'])} v{ds['version']} ({ds['n_images']} images, {ds['accepted']} accepted)"
              f" at {lit(ds['path'])}\n  evaluation: {lit(summary['evaluation_report'])}\n"
              f"  explorer:   {lit(summary['explorer'])}  (open it in a browser: no server needed)\n"
              f"  lineage:    cci lineage show {ds['artifact_id']}\n"
              f"  {summary['profile']}\n"
              f"  read it:    cci datasets show {lit(ds['dataset'])}   (or plain zarr + pyarrow, see its card.json)\n"
              "  Prefect UI: " + (f"{user_api.removesuffix('/api')} (flow runs, artifacts, assets)" if user_api else
                                  "this run's temporary server (its UI address printed first) has stopped; its "
                                  "runs stay in the store's Prefect database: `cci server start` serves them "
                                  "(and the next runs) in a UI that lasts"),
              highlight=False, soft_wrap=True)


def refresh(
    source: str = typer.Argument(..., help="The corpus's source, with new images in it."),
    run_id: Optional[str] = typer.Argument(None, help="Run to build on (default: the newest with trained generators)."),
    corpus: str = typer.Option(..., "--corpus", "-c", help="Corpus to refresh."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset to republish (default: <corpus>-generated)."),
    retrain_threshold: float = typer.Option(0.1, "--retrain-threshold",
            help="Retrain a cluster whose size grew by more than this share."),
    per_cluster: int = typer.Option(64, "--per-cluster", help="Images to publish per cluster."),
    store: Optional[str] = StoreOpt, dask_address: Optional[str] = DaskOpt, workers: Optional[int] = WorkersOpt,
    as_json: bool = JsonOpt, quiet: bool = QuietOpt, verbose: bool = VerboseOpt,
):
    """Ingest what is new, assign it with the classifier, report drift, retrain only the clusters
    that changed and publish a new dataset version. With nothing new it does nothing and says so.

    Example: cci refresh ./images --corpus photos   (or: cci refresh ./images RUN --corpus photos)
    """
    from flows.preflight import check_refresh
    store_obj = read_store(store)
    run_guarded(check_refresh, store_obj, source, corpus, run_id, dataset, retrain_threshold, per_cluster)
    from flows.refresh import refresh_flow  # after the checks: importing the flow (Prefect) takes seconds
    res = run_flow(refresh_flow, dask_address, workers,
                   source, corpus, store_root=str(store_obj.root), run_id=run_id, dataset=dataset,
                   retrain_threshold=retrain_threshold, per_cluster=per_cluster)
    if as_json:
        print_json(res)
        return
    if not res["changed"]:
        out.print(res["message"], highlight=False, soft_wrap=True, markup=False)
        return
    d = res["drift"]
    out.print(f"Refreshed {corpus} to v{res['corpus_version']}: {d['n_new']} new images, "
              f"{100 * d['low_confidence']:.1f}% low confidence, size shift {d['size_shift']:.3f}\n"
              f"  retrained clusters: {res['retrained'] or 'none'}; carried over: {res['carried_over']}\n"
              f"  new run: {res['run_id']}\n  dataset: {res['dataset']['dataset']} v{res['dataset']['version']}",
              highlight=False, soft_wrap=True, markup=False)


def _eval_options(items: list[str]) -> tuple[dict, int]:
    """``--eval-set`` as the pipeline's (eval_options, eval_samples), checked now, before any server starts."""
    from cci_core.common.options import typed_options
    from cci_core.generate.settings import EvalParams
    options = run_guarded(typed_options, EvalParams, name_values(items, "--eval-set"), "evaluation")
    samples = options.pop("samples", 200)  # the pipeline's own default for its evaluation stage
    run_guarded(EvalParams(samples=samples, **options).validate)
    return options, samples
