"""`cci refine`: the CCI classifier on a clustering run, published as a new run."""
from __future__ import annotations

from dataclasses import fields
from typing import Optional

import typer
from rich.table import Table

from cci_core.refine.config import RefineConfig
from flows.cli.common import lit, name_values, out, print_json, read_store, run_flow, run_guarded
from flows.cli.options import DaskOpt, DeviceOpt, JsonOpt, QuietOpt, StoreOpt, VerboseOpt, WorkersOpt


def refine(
    run_id: str = typer.Argument(..., help="A finished clustering run (see `cci cluster`)."),
    rounds: Optional[int] = typer.Option(
        None, "--rounds", help=f"Re-clustering rounds after round 0 (default {RefineConfig.rounds})."),
    k: Optional[str] = typer.Option(
        None, "--k", "-k", help="Number of clusters: auto chooses it among 4..20 from round 0's pre-trained "
                                "embedding, without labels (the BIC of GMMs on its UMAP: least, or its elbow); "
                                "LOW:HIGH chooses among those; a number sets it (default: RUN's own k). Needs "
                                "--start contrastive or autoencoder."),
    steps: Optional[int] = typer.Option(
        None, "--steps", help=f"Classifier training steps in each round after round 0 (default {RefineConfig.steps})."),
    warmup_steps: Optional[int] = typer.Option(
        None, "--warmup-steps", help="Classifier training steps in round 0, after the pre-training "
                                     f"(default {RefineConfig.warmup_steps})."),
    start: Optional[str] = typer.Option(
        None, "--start", help="Round 0's clustering: contrastive (SimCLR pre-training, then the consensus of "
                              "UMAP + GMM and SCAN heads), "
                              "autoencoder, or given (RUN's own clusters) "
                              f"(default {RefineConfig.start})."),
    cl_epochs: Optional[float] = typer.Option(
        None, "--cl-epochs", help="Contrastive pre-training epochs (the longest stage) "
                                  f"(default {RefineConfig.cl_epochs:g})."),
    lam: Optional[float] = typer.Option(
        None, "--lam", help=f"Weight of the k-means term in J = J_CE + lam * J_kmeans (default {RefineConfig.lam})."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help=f"Batch size (default {RefineConfig.batch_size})."),
    seed: Optional[int] = typer.Option(None, "--seed", help=f"Seed for everything random (default {RefineConfig.seed})."),
    device: Optional[str] = DeviceOpt,
    threads: Optional[int] = typer.Option(
        None, "--threads", help="CPU threads for torch, BLAS and numba (default: the Dask worker's own; "
                                "a LocalCluster of one worker has every core). Recorded in the run: CPU "
                                "results depend on it."),
    option: list[str] = typer.Option([], "--set", help="Any other RefineConfig field, as NAME=VALUE (repeatable)."),
    new_run_id: Optional[str] = typer.Option(None, "--run-id", help="Name of the refined run (default: RUN-refined)."),
    store: Optional[str] = StoreOpt, dask_address: Optional[str] = DaskOpt, workers: Optional[int] = WorkersOpt,
    as_json: bool = JsonOpt, quiet: bool = QuietOpt, verbose: bool = VerboseOpt,
):
    """Train the CCI classifier on RUN's clusters (J = J_CE + lam * J_kmeans, re-clustering its
    embedding each round) and publish the refined clustering as a new run.

    An interrupted refinement resumes from its last finished round when run again.

    Example: cci refine RUN --rounds 2 --steps 800   (or: cci refine RUN --k auto)
    """  # the defaults of every --set field are appended below
    from cci_core.refine.refine_run import check_refine, config_from_options
    options = {name: v for name, v in dict(rounds=rounds, k=k, steps=steps, warmup_steps=warmup_steps, start=start,
                                     cl_epochs=cl_epochs, lam=lam, batch_size=batch_size, seed=seed,
                                     device=device, threads=threads).items() if v is not None}
    options.update(name_values(option, "--set"))
    from flows.preflight import check_device
    run_guarded(check_device, options.get("device"))
    store_obj = read_store(store)
    config = run_guarded(config_from_options, options)
    run_guarded(check_refine, store_obj, run_id, config, new_run_id)
    from flows.refine import refine_flow  # after the checks: importing the flow (Prefect) takes seconds
    from flows.settings import RefineSettings
    summary = run_flow(refine_flow, dask_address, workers or 1,
                       RefineSettings(run_id, store_root=str(store_obj.root), config=config, new_run_id=new_run_id))
    if as_json:
        print_json(summary)
        return
    t = Table("round", "acc", "nmi", "ari", "silhouette", "selection", "changed", "seconds",
              title=f"CCI refinement of {lit(run_id)} (kept round {summary['chosen_round']})")

    def f(v):
        return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
    for r in summary["rounds"]:
        t.add_row(str(r.get("round")), f(r.get("acc")), f(r.get("nmi")), f(r.get("ari")), f(r.get("silhouette")),
                  f(r.get("selection_score")), f(r.get("changed")), f(r.get("wall_seconds")))
    out.print(t)
    if (choice := summary["rounds"][0].get("k_choice") if summary["rounds"] else None) is not None:
        from cci_core.refine.choose_k import choice_line
        out.print(f"k: {choice_line(choice)}", highlight=False, soft_wrap=True, markup=False)
    n = summary["threads"]
    on = summary["device"] + (f", {n} thread{'s' * (n != 1)}" if summary["device"] == "cpu" else "")
    out.print(f"Refined run [bold]{lit(summary['run_id'])}[/]: {len(summary['partitions'])} clusters, "
              f"{100 * summary['changed_from_parent']:.1f}% of images moved from run {lit(run_id)}\n"
              f"  classifier: {summary['classifier_artifact_id']}  ({lit(summary['classifier'])}; trained on {on})\n"
              f"  clustering: {summary['clustering_artifact_id']}\n  report: {lit(summary['report'])}\n"
              f"  explorer: {lit(next((p for p in summary['pictures'] if p.endswith('explore.html')), 'none'))}\n"
              f"  next: cci predict {lit(summary['run_id'])} PATH   |   cci train {lit(summary['run_id'])}",
              highlight=False, soft_wrap=True)


refine.__doc__ += "\n\n    Every field for --set NAME=VALUE, with its default (see RefineConfig):\n\n    " + ", ".join(
    f"{f.name}={getattr(RefineConfig, f.name)}" for f in fields(RefineConfig)) + "\n"
