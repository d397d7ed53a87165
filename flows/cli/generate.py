"""`cci generate`: a run's generators publish a new dataset version."""
from __future__ import annotations

from typing import Optional

import typer

from flows.cli.common import lit, out, print_json, read_store, run_flow, run_guarded
from flows.cli.options import DaskOpt, JsonOpt, QuietOpt, StoreOpt, VerboseOpt, WorkersOpt


def generate(
    run_id: str = typer.Argument(..., help="A run with trained generators (see `cci train`)."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset name; each call publishes a new version."),
    per_cluster: int = typer.Option(100, "--per-cluster", "-n", help="Images to generate for each cluster."),
    threshold: float = typer.Option(0.5, "--threshold", help="Classifier confidence needed to mark an image accepted."),
    models: Optional[str] = typer.Option(None, "--models", help="per-cluster or conditional (default: what was trained)."),
    seed: int = typer.Option(0, "--seed", help="Generation seed (recorded per image in the manifest)."),
    store: Optional[str] = StoreOpt, dask_address: Optional[str] = DaskOpt, workers: Optional[int] = WorkersOpt,
    as_json: bool = JsonOpt, quiet: bool = QuietOpt, verbose: bool = VerboseOpt,
):
    """Generate images for every cluster of RUN, score them with the run's classifier, and publish
    them as a new dataset version (images.zarr + manifest.parquet + card.json, committed last).

    Example: cci generate RUN --dataset fmnist-gen --per-cluster 100
    """
    from flows.preflight import check_generate
    store_obj = read_store(store)
    run_guarded(check_generate, store_obj, run_id, dataset, per_cluster, threshold, models)
    from flows.generate import generate_flow  # after the checks: importing the flow (Prefect) takes seconds
    from flows.settings import GenerateSettings
    out_ = run_flow(generate_flow, dask_address, workers or 1,
                    GenerateSettings(run_id, dataset, store_root=str(store_obj.root), per_cluster=per_cluster,
                                     threshold=threshold, seed=seed, models=models))
    if as_json:
        print_json(out_)
        return
    out.print(f"Dataset [bold]{lit(dataset)}[/] v{out_['version']}: {out_['n_images']:,} images from the {out_['models']} "
              f"generators of run {lit(run_id)}, {out_['accepted']:,} accepted by the {lit(out_['classifier'])}\n"
              f"  folder: {lit(out_['path'])}\n  lineage id: {out_['artifact_id']}\n  samples: {lit(out_['sample_grid'])}\n"
              f"  next: cci datasets show {lit(dataset)}   |   cci lineage show {out_['artifact_id']}",
              highlight=False, soft_wrap=True)
