"""`cci train` (generators per cluster, or one conditional GAN, and a baseline) and `cci evaluate`."""
from __future__ import annotations

from typing import Optional

import typer

from flows.cli.common import err, fail, lit, out, print_json, read_store, run_flow, run_guarded
from flows.cli.features import run_self_condition
from flows.cli.options import DaskOpt, DeviceOpt, JsonOpt, QuietOpt, SeedOpt, StoreOpt, VerboseOpt, WorkersOpt


def train(
    run_id: str = typer.Argument(..., help="A finished clustering run (see `cci cluster`)."),
    model: str = typer.Option("gan", "--model", help="Per-cluster generator: gan (DCGAN-style) or vae."),
    mode: str = typer.Option("per-cluster", "--mode",
                             help="per-cluster (one model per cluster), conditional (one cluster-conditional GAN) "
                                  "or self-conditioned (one GAN conditioned on clusters of its own discriminator's "
                                  "features, published as the run RUN-selfcond)."),
    steps: int = typer.Option(2000, "--steps", help="Training steps per cluster; the conditional GAN and the "
                                                    "baseline get steps x trained clusters."),
    shared_start: float = typer.Option(
        0.5, "--shared-start",
        help="Per-cluster: the share of the total steps spent on one shared start (a cluster-conditional GAN on "
             "the pooled partitions; a VAE: one VAE), from which each cluster's model is fine-tuned on its own "
             "partition with the rest. 0 = each cluster from scratch. Default 0.5: at an equal budget it beat the "
             "one big GAN on FD and coverage on Fashion-MNIST (benchmarks/generate.py)."),
    seconds: Optional[float] = typer.Option(None, "--seconds", help="Time budget per cluster (scaled the same way)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per training step."),
    min_size: int = typer.Option(100, "--min-size", help="Skip clusters with fewer images (listed in the report)."),
    ema: bool = typer.Option(False, "--ema", help="Keep an EMA of the generator weights (GAN only)."),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every", help="Steps between checkpoints and sample grids."),
    seed: int = SeedOpt,
    baseline: bool = typer.Option(True, "--baseline/--no-baseline",
                                  help="Also train one unconditional GAN on the whole corpus, same total steps."),
    recluster_every: int = typer.Option(500, "--recluster-every",
                                        help="Self-conditioned only: steps between re-clusterings."),
    width: int = typer.Option(24, "--width", help="Width of the per-cluster models, their shared start and the "
                                                  "conditional GAN (GAN g_width = d_width; VAE width)."),
    baseline_width: int = typer.Option(32, "--baseline-width",
                                       help="Width of the baseline: one unconditional GAN on the whole corpus."),
    d_condition: str = typer.Option("concat", "--d-condition",
                                    help="Conditional GAN: the discriminator sees the cluster id as input planes "
                                         "(concat) or through a projection."),
    mode_seeking: Optional[float] = typer.Option(None, "--mode-seeking",
                                       help="GANs: weight of the mode-seeking term against within-cluster "
                                            "collapse (0 = off). Default: 1 for the conditional and "
                                            "self-conditioned GANs, 0 for the unconditional ones."),
    z_dim: int = typer.Option(64, "--z-dim", help="Latent size."),
    device: Optional[str] = DeviceOpt,
    gpu_resource: Optional[bool] = typer.Option(
        None, "--gpu-resource/--no-gpu-resource",
        help="Ask Dask for a GPU resource per training task (default: only when the workers advertise one)."),
    store: Optional[str] = StoreOpt, dask_address: Optional[str] = DaskOpt, workers: Optional[int] = WorkersOpt,
    as_json: bool = JsonOpt, quiet: bool = QuietOpt, verbose: bool = VerboseOpt,
):
    """Train one generator per cluster of RUN (or one conditional GAN), each a parallel task,
    plus an unconditional baseline GAN on the whole corpus with the same total steps.
    A re-run resumes from the checkpoints.

    Example: cci train RUN --steps 2000 --model gan
    """
    from cci_core.generate.settings import TrainParams
    from cci_core.generate.training_run import plan_training
    from flows.preflight import check_device
    run_guarded(check_device, device)
    # unset: each mode's own default (1 for the conditional GANs, 0 for the unconditional ones)
    seeking = {} if mode_seeking is None else {"mode_seeking": mode_seeking}
    if mode == "self-conditioned":
        from cci_core.store.runs import finished_run
        refused = [(model != "gan", f"--model {model}"), (ema, "--ema"), (seconds is not None, "--seconds")]
        for bad, flag in refused:
            if bad:
                fail(f"{flag} does not apply to --mode self-conditioned (one GAN, a step budget, no EMA); drop it")
        k = len(run_guarded(finished_run, read_store(store), run_id)["partitions"])
        # same total budget as --mode conditional: steps per cluster x clusters
        options = dict(steps=steps * k, recluster_every=recluster_every, batch_size=batch_size, width=width,
                       z_dim=z_dim, checkpoint_every=checkpoint_every, seed=seed, device=device, **seeking)
        run_self_condition(run_id, options, None, store, dask_address, workers, as_json)
        return
    main = dict(model=model, mode=mode, steps=steps, seconds=seconds, batch_size=batch_size, min_size=min_size,
                ema=ema, checkpoint_every=checkpoint_every, seed=seed, baseline=baseline)
    options = dict(width=width, baseline_width=baseline_width, shared_start=shared_start, z_dim=z_dim,
                   d_condition=d_condition, device=device, **seeking)
    store_obj = read_store(store)
    # everything checkable is checked here, before a server or a cluster is started
    params = TrainParams(**main, **options)
    plan = run_guarded(plan_training, store_obj, run_id, params)
    from flows.settings import TrainSettings
    from flows.train import train_flow  # after the checks: importing the flow (Prefect) takes seconds
    summary = run_flow(train_flow, dask_address, workers,
                       TrainSettings(run_id, store_root=str(store_obj.root), params=params, gpu_resource=gpu_resource))
    if as_json:
        print_json(summary)
        return
    fresh = [r for r in summary["models"] if not r.get("from_earlier_run")]
    out.print(f"Run [bold]{lit(run_id)}[/]: trained {len(fresh)} {mode} {model} model(s) "
              f"({len(plan['trained_clusters'])} clusters, {summary['total_steps']} steps per full budget)",
              highlight=False)
    for r in fresh:
        losses = "  ".join(f"{k}={v:.4g}" for k, v in r["losses"].items())
        resumed = f", resumed from {r['resumed_from']}" if r["resumed_from"] is not None else ""
        out.print(f"  {lit(r['name'])}: {r['steps']} steps on {r['n_train']:,} images{resumed}  {losses}  "
                  f"[dim]{r['artifact_id']}[/]", highlight=False)
    for s in summary["skipped"]:
        err.print(f"[yellow]skipped[/] cluster {s['cluster']}: {lit(s['reason'])}", highlight=False)
    out.print(f"  models: {summary['run_dir']}/models\n  report: {summary['training_report']}\n"
              f"  next: cci evaluate {run_id}   |   cci lineage show {summary['models'][0]['artifact_id']}",
              highlight=False, markup=False)


def evaluate(
    run_id: str = typer.Argument(..., help="A run with trained generators (see `cci train`)."),
    samples: int = typer.Option(500, "--samples", help="Generated images per cluster."),
    max_real: int = typer.Option(2000, "--max-real", help="Real images per cluster compared against (sampled)."),
    ref_steps: int = typer.Option(600, "--ref-steps", help="Training steps of the reference CNNs."),
    seed: int = SeedOpt,
    device: Optional[str] = DeviceOpt,
    store: Optional[str] = StoreOpt, dask_address: Optional[str] = DaskOpt, workers: Optional[int] = WorkersOpt,
    as_json: bool = JsonOpt, quiet: bool = QuietOpt, verbose: bool = VerboseOpt,
):
    """Measure what the generators of RUN make against the real images (FD, KID, precision/recall,
    density/coverage, per-cluster fidelity, IS analogue), side by side with the baseline.

    Example: cci evaluate RUN --samples 500
    """
    from cci_core.generate.evaluation_run import plan_evaluation
    from cci_core.generate.settings import EvalParams
    from flows.preflight import check_device
    run_guarded(check_device, device)
    options = dict(max_real=max_real, ref_steps=ref_steps, seed=seed, device=device)
    store_obj = read_store(store)
    params = EvalParams(samples=samples, **options)
    run_guarded(plan_evaluation, store_obj, run_id, params)
    from flows.settings import EvaluateSettings
    from flows.train import evaluate_flow  # after the checks: importing the flow (Prefect) takes seconds
    summary = run_flow(evaluate_flow, dask_address, workers,
                       EvaluateSettings(run_id, store_root=str(store_obj.root), params=params))
    if as_json:
        print_json(summary)
        return
    out.print(summary["markdown"], highlight=False, markup=False)
    out.print(f"\n  report: {summary['report']}\n  lineage id: {summary['report_artifact_id']}\n"
              f"  next: cci lineage show {summary['report_artifact_id']}", highlight=False, markup=False)
