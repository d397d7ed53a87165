"""`cci features` (every feature space of a run on one table) and `cci self-condition` (a
self-conditioned GAN whose clustering is published as a new run; `cci train --mode
self-conditioned` runs it too)."""
from __future__ import annotations

from typing import Optional

import typer

from flows.cli.common import err, fail, lit, out, print_json, read_store, run_flow, run_guarded
from flows.cli.options import DaskOpt, DeviceOpt, JsonOpt, QuietOpt, SeedOpt, StoreOpt, VerboseOpt, WorkersOpt


def features(
    run_id: str = typer.Argument(..., help="A finished run (clustering, refined or self-conditioned)."),
    space: list[str] = typer.Option([], "--space", help="Compare only this space (repeatable): pixels, pca, "
                                                        "classifier, discriminator, selfcond, vae. "
                                                        "Default: every trained one."),
    k: Optional[int] = typer.Option(None, "--k", "-k", help="k-means clusters (default: number of classes, "
                                    "else the run's k)."),
    fractions: str = typer.Option("0.01,0.1,1", "--fractions", help="Shares of the labels the probes train on."),
    max_train: Optional[int] = typer.Option(None, "--max-train", help="Cap on the probes' train split."),
    max_test: Optional[int] = typer.Option(None, "--max-test", help="Cap on the probes' held-out rows."),
    forest_trees: int = typer.Option(100, "--forest-trees", help="Random-forest trees."),
    vae_steps: Optional[int] = typer.Option(None, "--vae-steps",
                                            help="First train one VAE on the whole corpus for this many steps."),
    seed: int = SeedOpt,
    device: Optional[str] = DeviceOpt,
    store: Optional[str] = StoreOpt, dask_address: Optional[str] = DaskOpt, workers: Optional[int] = WorkersOpt,
    as_json: bool = JsonOpt, quiet: bool = QuietOpt, verbose: bool = VerboseOpt,
):
    """Compare every feature space of RUN on one table: k-means ACC/NMI/ARI and sampled silhouette,
    and (with labels) linear / k-NN / random-forest accuracy on 1, 10 and 100 % of the labels.

    Example: cci features RUN --space pixels --space pca
    """
    from rich.table import Table

    from cci_core.features import feature_spaces as fs
    try:
        fr = [float(f) for f in fractions.split(",") if f.strip()]
    except ValueError:
        fail(f"--fractions {fractions!r}: give shares like 0.01,0.1,1")
    from flows.preflight import check_device
    run_guarded(check_device, device)
    options = dict(k=k, fractions=fr, max_train=max_train, max_test=max_test, forest_trees=forest_trees,
                   seed=seed, device=device)
    store_obj = read_store(store)
    params = fs.FeatureParams(spaces=list(space) or None, **options)
    if vae_steps is not None and vae_steps < 1:
        fail(f"--vae-steps {vae_steps} must be a positive integer")
    run_guarded(params.validate)
    if not vae_steps or "vae" not in (params.spaces or []):
        run_guarded(fs.plan_features, store_obj, run_id, params)  # every check before a server starts
    from flows.features import features_flow  # after the checks: importing the flow (Prefect) takes seconds
    from flows.settings import FeaturesSettings
    summary = run_flow(features_flow, dask_address, workers or 1,
                       FeaturesSettings(run_id, store_root=str(store_obj.root), params=params, vae_steps=vae_steps))
    if as_json:
        print_json(summary)
        return
    rows = summary["table"]

    def cell(v):
        return "—" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
    if rows:  # two narrow tables: clustering, then the probes
        first = ["space", "dim", "acc", "nmi", "ari", "silhouette", "seconds"]
        t = Table(*first, title=f"feature spaces of run {lit(run_id)}: k-means")
        for r in rows:
            t.add_row(*(cell(r[c]) for c in first))
        out.print(t)
        probes = [c for c in rows[0] if c not in first]
        t = Table("space", *probes, title="probe accuracy on held-out rows (share of the labels)")
        for r in rows:
            t.add_row(r["space"], *(cell(r[c]) for c in probes))
        out.print(t)
    for s in summary["skipped"]:
        err.print(f"[yellow]not compared[/] {lit(s['space'])}: {lit(s['reason'])}", highlight=False)
    if summary["probe_note"]:
        err.print(f"[yellow]note[/] {lit(summary['probe_note'])}", highlight=False)
    out.print(f"  report: {summary['report']}\n  chart: {summary['chart']}\n  lineage id: "
              f"{summary['report_artifact_id']}\n  next: cci lineage show {summary['report_artifact_id']}",
              highlight=False, markup=False)


def self_condition(
    run_id: str = typer.Argument(..., help="A finished clustering run (see `cci cluster`)."),
    k: Optional[int] = typer.Option(None, "--k", "-k", help="Number of conditions (clusters) (default: the run's "
                                                            "clusters)."),
    steps: int = typer.Option(2000, "--steps", help="Training steps per cluster (condition), as in `cci train`: "
                                                    "the one GAN trains steps x k in all."),
    recluster_every: int = typer.Option(500, "--recluster-every", help="Steps between re-clusterings."),
    init: str = typer.Option("discriminator", "--init", help="discriminator (k-means of the untrained D's "
                                                              "features) or parent (the run's clusters)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per training step."),
    width: int = typer.Option(32, "--width", help="GAN width (g_width = d_width; D features = 4 x width)."),
    z_dim: int = typer.Option(64, "--z-dim", help="Latent size."),
    mode_seeking: float = typer.Option(1.0, "--mode-seeking",
                                       help="Weight of the mode-seeking term against within-condition collapse "
                                            "(0 = off)."),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every", help="Steps between checkpoints."),
    seed: int = SeedOpt,
    device: Optional[str] = DeviceOpt,
    new_run_id: Optional[str] = typer.Option(None, "--run-id", help="The new run (default: RUN-selfcond)."),
    store: Optional[str] = StoreOpt, dask_address: Optional[str] = DaskOpt, workers: Optional[int] = WorkersOpt,
    as_json: bool = JsonOpt, quiet: bool = QuietOpt, verbose: bool = VerboseOpt,
):
    """Train a self-conditioned GAN (conditions: k-means clusters of its own discriminator's
    features, re-found as training goes) and publish its clustering as a new run that
    `cci evaluate`, `cci generate` and `cci features` read. A re-run resumes.

    Example: cci self-condition RUN -k 10 --steps 200
    """
    from cci_core.store.runs import finished_run
    n_conditions = k or len(run_guarded(finished_run, read_store(store), run_id)["partitions"])
    options = dict(k=k, steps=steps * n_conditions, recluster_every=recluster_every, init=init, batch_size=batch_size,
                   width=width, z_dim=z_dim, mode_seeking=mode_seeking, checkpoint_every=checkpoint_every,
                   seed=seed, device=device)
    run_self_condition(run_id, options, new_run_id, store, dask_address, workers, as_json)


def run_self_condition(run_id: str, options: dict, new_run_id: str | None, store: str | None,
                       dask_address: str | None, workers: int | None, as_json: bool) -> None:
    """Check, run the self-conditioning flow and print its summary: the body of
    ``cci self-condition`` and of ``cci train --mode self-conditioned``."""
    from cci_core.generate import selfcond as sc
    from flows.preflight import check_device
    run_guarded(check_device, options.get("device"))
    store_obj = read_store(store)
    params = sc.SelfCondParams(**options)
    run_guarded(sc.check_selfcond, store_obj, run_id, params, new_run_id)
    from flows.features import selfcond_flow  # after the checks: importing the flow (Prefect) takes seconds
    from flows.settings import SelfCondSettings
    summary = run_flow(selfcond_flow, dask_address, workers or 1,
                       SelfCondSettings(run_id, store_root=str(store_obj.root), params=params, new_run_id=new_run_id))
    if as_json:
        print_json(summary)
        return
    m = summary["metrics"]
    out.print(f"Run [bold]{lit(summary['run_id'])}[/]: self-conditioned GAN, k={summary['k']}, {options['steps']} steps; "
              f"sizes {summary['sizes']}"
              + (f"; acc {m['acc']:.3f} nmi {m['nmi']:.3f} ari {m['ari']:.3f}" if "nmi" in m else ""),
              highlight=False)
    for h in summary["history"]:
        changed = "" if h.get("changed") is None else f" changed {h['changed']:.1%}"
        out.print(f"  step {h['step']}:{changed}" + (f" nmi {h['nmi']:.3f}" if "nmi" in h else ""),
                  highlight=False)
    out.print(f"  run: {summary['run_dir']}\n  clustering: {summary['clustering_artifact_id']}\n"
              f"  next: cci evaluate {summary['run_id']}   |   cci features {summary['run_id']}   |   "
              f"cci generate {summary['run_id']} ...", highlight=False, markup=False)
