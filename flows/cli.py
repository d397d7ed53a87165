"""The `cci` command line: starts flows and reads the store. Each command ends by saying
what it made (artifact ids and paths) so the next command can be typed from its output."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here

import typer
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from cci_core.ingest.images import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_IMAGE_PIXELS
from flows.cli_output import QuietOpt, VerboseOpt

app = typer.Typer(help="CCI: cluster image corpora, learn the clusters, generate new images - "
                       "on Prefect + Dask, with lineage for every artifact.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
corpus_app = typer.Typer(help="Look at corpora in the store.", no_args_is_help=True)
datasets_app = typer.Typer(help="Published (generated) datasets: list, show, export.", no_args_is_help=True)
lineage_app = typer.Typer(help="Query the lineage store.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")
app.add_typer(lineage_app, name="lineage")
app.add_typer(datasets_app, name="datasets")

out = Console()
err = Console(stderr=True)

def _dask_address_now(value: str | None) -> str | None:
    """Checked while the command line is parsed: before the command's imports and any server."""
    from flows.preflight import check_dask_address
    run_guarded(check_dask_address, value)
    return value


def _workers_now(value: int | None) -> int | None:
    if value is not None and value < 1:
        fail(f"--workers {value}: give at least 1 worker process")
    return value


StoreOpt = typer.Option(None, "--store", envvar="CCI_STORE",
                        help="Artifact store root (default ./cci-store, or $CCI_STORE).")
DaskOpt = typer.Option(None, "--dask-address", envvar="CCI_DASK_ADDRESS", callback=_dask_address_now,
                       help="Use an existing Dask scheduler (tcp://host:port) instead of a LocalCluster.")
WorkersOpt = typer.Option(None, "--workers", callback=_workers_now,
                          help="LocalCluster worker processes (default: cores, at most 4).")
JsonOpt = typer.Option(False, "--json", help="Print the result as JSON on stdout (for other programs).")


def fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _expected_errors():
    from flows.quietlog import EXPECTED  # one list: these print one line, here and in Prefect's log
    return EXPECTED


def read_store(store: str | None) -> "Store":  # noqa: F821 - imported where used (pandas: 0.3 s)
    """The existing store a reading command works on; a missing or mistyped one is one red line."""
    from flows.preflight import existing_store
    return run_guarded(existing_store, store)


def run_flow(flow, dask_address: str | None, workers: int | None, *args, **kwargs):
    """Run a Prefect flow against the Prefect API (the store's warm server, else a temporary one
    when none is set) with a Dask task runner (the scheduler at ``dask_address``, the warm one, else
    a LocalCluster of ``workers``), showing one line or progress bar per stage (flows.cli_output);
    expected errors become one red line and exit code 1."""
    import contextlib

    from flows import cli_output
    from flows.server import warm
    cli_output.configure_logging()  # before the LocalCluster's workers inherit the environment
    state = None if dask_address else warm(kwargs.get("store_root"))
    if state:
        os.environ["PREFECT_API_URL"] = state["api_url"]
        dask_address = state["dask_address"]
        cli_output.say(err, f"Using the warm server of this store: Prefect {state['api_url']}, Dask "
                            f"{dask_address} (`cci server stop` ends them)")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.preflight import check_prefect_api
    with contextlib.ExitStack() as stack:
        if os.environ.get("PREFECT_API_URL"):  # Prefect may have read its settings before the warm server's URL
            stack.enter_context(temporary_settings({PREFECT_API_URL: os.environ["PREFECT_API_URL"]}))
        run_guarded(check_prefect_api)  # a PREFECT_API_URL nobody answers: one line, not Prefect's retries and traceback
        import dask

        from flows import quietlog
        from flows.preflight import check_dask_address
        from flows.runtime import dask_task_runner, prefect_api
        if workers is not None and workers < 1:
            fail(f"--workers {workers}: give at least 1 worker process")
        run_guarded(check_dask_address, dask_address)  # seconds, not a server start-up, before a wrong address
        quietlog.install()  # an expected error is one line here, not Prefect's logged traceback
        from flows.liveness import heartbeats
        from flows.naming import tagged
        api_url = run_guarded(stack.enter_context, prefect_api(announce=lambda msg: cli_output.say(err, msg)))
        # tagged: the run is named and tagged from its inputs; heartbeats: a killed run ends as Crashed
        stack.enter_context(heartbeats())
        stack.enter_context(tagged(flow, *args, **kwargs))
        stack.enter_context(dask.config.set({"distributed.worker.preload": ["flows.quietlog"]}))
        stack.enter_context(cli_output.StageProgress(err, api_url))
        return run_guarded(flow.with_options(task_runner=dask_task_runner(dask_address, workers)), *args, **kwargs)


def run_guarded(fn, *args, **kwargs):
    """Run a flow or library call; expected errors become one red line and exit code 1."""
    try:
        return fn(*args, **kwargs)
    except _expected_errors() as exc:
        fail(str(exc))


def name_values(items: list[str], flag: str) -> dict[str, str]:
    """``NAME=VALUE`` options (repeatable flags) as a dict; anything else is one red line."""
    out_ = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            fail(f"{flag} {item!r}: write NAME=VALUE, e.g. {flag} trust_quantile=0.7")
        out_[name.strip()] = value.strip()
    return out_


def parse_size(size: Optional[str]) -> Optional[tuple[int, int]]:
    if not size:
        return None
    try:
        parts = [int(p) for p in size.lower().split("x")]
    except ValueError:
        fail(f"--size {size!r}: give HxW (e.g. 28x28) or one number for square images")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        fail(f"--size {size!r}: give HxW (e.g. 28x28) or one number for square images")
    return parts[0], parts[1]


@app.command()
def ingest(
    source: str = typer.Argument(..., help="Folder of images (recursive), IDX file/folder (MNIST format, "
                                           ".gz or raw), .npy/.npz array, tar archive, or builtin:digits."),
    corpus: str = typer.Option(..., "--corpus", "-c", help="Corpus name in the store (created if new)."),
    size: Optional[str] = typer.Option(None, "--size", help="Image size HxW (e.g. 28x28); default: the first image's."),
    channels: Optional[int] = typer.Option(None, "--channels", help="1 (gray) or 3 (RGB); default: from the first image."),
    fit: str = typer.Option("stretch", "--fit", help="How to resize to --size: stretch, crop (centre) or pad."),
    label_from_folder: bool = typer.Option(False, "--label-from-folder",
                                           help="Use each file's first folder level as its label."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size",
                                             help="Images per parallel task (default 512 files, 16384 array rows)."),
    value_range: str = typer.Option("auto", "--value-range",
                                    help="Array sources: the values that map to 0..255: 0-1, 0-255 or -1-1; auto "
                                         "decides from the whole source (integers 0-255; floats 0-1, -1-1 or 0-255)."),
    clip: bool = typer.Option(False, "--clip", help="Clip array values outside --value-range instead of refusing."),
    max_file_bytes: int = typer.Option(DEFAULT_MAX_FILE_BYTES, "--max-file-bytes",
                                       help="Largest file or tar member read; larger ones are quarantined."),
    max_image_pixels: int = typer.Option(DEFAULT_MAX_IMAGE_PIXELS, "--max-image-pixels",
                                         help="Most pixels one image may decode to (decompression-bomb guard)."),
    follow_symlinks: bool = typer.Option(False, "--follow-symlinks",
                                         help="Read file symlinks that point outside the source folder."),
    store: Optional[str] = StoreOpt, dask_address: Optional[str] = DaskOpt, workers: Optional[int] = WorkersOpt,
    as_json: bool = JsonOpt, quiet: bool = QuietOpt, verbose: bool = VerboseOpt,
):
    """Ingest SOURCE into a corpus: a new version holding only images not stored yet.

    Corrupt or unreadable files are quarantined (listed with reasons), not fatal.

    Example: cci ingest /usr/share/datasets/fashion-mnist --corpus fmnist
    """
    from cci_core.ingest.ingest import check_ingest_request
    from flows.ingest import ingest_flow
    shape = parse_size(size)
    from cci_core.store.store import Store
    store_obj = Store(store)
    options = dict(size=shape, channels=channels, fit=fit, label_from_folder=label_from_folder,
                   batch_size=batch_size, value_range=value_range, clip=clip, max_file_bytes=max_file_bytes,
                   max_image_pixels=max_image_pixels, follow_symlinks=follow_symlinks)
    # everything checkable is checked here, before a server or a cluster is started
    run_guarded(check_ingest_request, store_obj, source, corpus, **options)
    summary = run_flow(ingest_flow, dask_address, workers, source, corpus, store_root=str(store_obj.root), **options)
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    for q in summary["quarantine"]:
        err.print(f"[yellow]quarantined[/] {q['source']}: {q['reason']}", highlight=False)
    if summary["changed"]:
        out.print(f"Corpus [bold]{corpus}[/] v{summary['version']}: added {summary['added']:,} images "
                  f"({summary['duplicates']:,} duplicates skipped, {summary['quarantined']} quarantined); "
                  f"now {summary['n_rows']:,} images {'x'.join(map(str, summary['shape']))}.")
    else:
        out.print(f"Nothing new: corpus [bold]{corpus}[/] stays at v{summary['version']} "
                  f"({summary['n_rows']:,} images; {summary['duplicates']:,} already stored, "
                  f"{summary['quarantined']} quarantined).")
    out.print(f"  lineage id: {summary['artifact_id']}\n  store: {summary['store']}\n"
              f"  next: cci corpus info {corpus}   |   cci lineage show {summary['artifact_id']}", highlight=False)


def _number(text: str, what: str) -> int | float:
    try:
        value = float(text)
    except ValueError:
        fail(f"{what} {text!r}: give a whole number of components or a variance ratio in (0, 1)")
    return int(value) if value.is_integer() else value


def _version(text: str) -> int | None:
    """``--version`` as every command takes it: ``3``, ``v3`` or ``latest`` (None)."""
    value = str(text).strip().lower()
    if value in ("", "latest"):
        return None
    digits = value.removeprefix("v")
    if not digits.isdigit():
        fail(f"--version {text!r}: give a version number such as 3 or v3, or latest")
    return int(digits)


def _k_option(text: str) -> int | str:
    """``--k``: one number of clusters (an int) or a range to choose from (checked here, kept as text)."""
    from cci_core.cluster.choose_k import parse_k_range
    try:
        ks = parse_k_range(text)
    except ValueError as exc:
        fail(f"--k {text}: {exc}")
    return ks[0] if text.strip().isdigit() else text.strip()


@app.command()
def cluster(
    corpus: str = typer.Argument(..., help="Corpus name in the store."),
    k: str = typer.Option("10", "--k", "-k", help="Number of clusters, or a range to choose from: 5:30 or 5:30:5."),
    algorithm: str = typer.Option("kmeans", "--algorithm", "-a",
                                  help="kmeans (all rows), gmm, agglomerative, dbscan or hdbscan (on a sample, "
                                       "extended to every row)."),
    embedding: str = typer.Option("pca", "--embedding", help="Cluster the PCA projections (pca) or their UMAP (umap)."),
    components: str = typer.Option("50", "--components", help="PCA components, or a variance ratio such as 0.9."),
    whiten: bool = typer.Option(False, "--whiten", help="Scale the PCA projections to unit variance."),
    solver: str = typer.Option("cov", "--solver", help="PCA solver: cov, randomized, full or tsqr."),
    umap_dim: int = typer.Option(10, "--umap-dim", help="UMAP dimensions (--embedding umap)."),
    umap_neighbors: int = typer.Option(20, "--umap-neighbors", help="UMAP neighbours (--embedding umap)."),
    umap_sample: int = typer.Option(100000, "--umap-sample",
                                    help="Rows UMAP is fitted on; the others are mapped with its transform."),
    sample_size: int = typer.Option(20000, "--sample-size",
                                    help="Rows the sample-based algorithms and the choice of k are fitted on."),
    k_criterion: str = typer.Option("silhouette", "--k-criterion", help="How a k range is decided: silhouette or elbow."),
    eps: Optional[float] = typer.Option(None, "--eps", help="DBSCAN neighbourhood radius."),
    min_samples: Optional[int] = typer.Option(None, "--min-samples", help="DBSCAN / HDBSCAN core point size."),
    min_cluster_size: Optional[int] = typer.Option(None, "--min-cluster-size", help="HDBSCAN smallest cluster."),
    seed: int = typer.Option(0, "--seed", help="Every random draw derives from it."),
    version: Optional[int] = typer.Option(None, "--version", parser=lambda t: _version(t),
                                          metavar="VERSION", help="Corpus version: 3, v3 or latest (default: latest)."),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="Name of the run (default: <corpus>-<time>-<hex>)."),
    store: Optional[str] = StoreOpt, dask_address: Optional[str] = DaskOpt, workers: Optional[int] = WorkersOpt,
    as_json: bool = JsonOpt, quiet: bool = QuietOpt, verbose: bool = VerboseOpt,
):
    """Cluster a corpus: PCA on Dask, k-means (or another algorithm), metrics, one partition
    per cluster, montages and a scatter plot, with lineage for each.

    Example: cci cluster fmnist -k 10   (or -k 5:30 to choose k by silhouette)
    """
    from cci_core.cluster.cluster_run import ClusterParams, check_request
    k_value: int | str | None = _k_option(k)
    if algorithm in ("dbscan", "hdbscan") and k == "10":
        k_value = None  # the density algorithms find their own number of clusters
    options = dict(solver=solver, umap_dim=umap_dim, umap_neighbors=umap_neighbors, umap_sample=umap_sample,
                   sample_size=sample_size, k_criterion=k_criterion, eps=eps, min_samples=min_samples,
                   min_cluster_size=min_cluster_size)
    main = dict(k=k_value, algorithm=algorithm, embedding=embedding,
                n_components=_number(components, "--components"), whiten=whiten, seed=seed)
    store_obj = read_store(store)
    # everything checkable is checked here, before a server or a cluster is started
    run_guarded(check_request, store_obj, corpus, ClusterParams(**main, **options), version, run_id)
    from flows.cluster import cluster_flow  # after the checks: importing the flow (Prefect) takes seconds
    summary = run_flow(cluster_flow, dask_address, workers,
                       corpus, store_root=str(store_obj.root), version=version, run_id=run_id,
                       options=options, **main)
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    m = summary["metrics"]
    if summary["choose_k"]:
        t = Table("k", "inertia", "silhouette", title=f"choosing k ({summary['choose_k']['criterion']})")
        for row in summary["choose_k"]["scores"]:
            t.add_row(str(row["k"]), f"{row['inertia']:.6g}",
                      "" if row["silhouette"] is None else f"{row['silhouette']:.4f}")
        out.print(t)
    out.print(f"Run [bold]{summary['run_id']}[/]: {summary['algorithm']} on {summary['embedding']} of corpus "
              f"{corpus} v{summary['corpus_version']} -> {summary['n_clusters']} clusters over "
              f"{summary['n_rows']:,} images" + (f" ({summary['n_noise']:,} noise)" if summary["n_noise"] else ""),
              highlight=False, soft_wrap=True)
    out.print("  " + "  ".join(f"{key}={m[key]:.4g}" for key in ("acc", "nmi", "ari", "purity", "silhouette",
                                                               "davies_bouldin", "inertia") if key in m),
              highlight=False, soft_wrap=True)
    out.print("  sizes: " + ", ".join(str(p["count"]) for p in summary["partitions"]), highlight=False, soft_wrap=True)
    if summary["extension"]:
        out.print(f"  note: {summary['extension']}", highlight=False, soft_wrap=True)
    out.print(f"  clustering: {summary['clustering_artifact_id']}  pca: {summary['pca_artifact_id']}\n"
              f"  run folder: {summary['run_dir']}\n  report: {summary['report']}\n"
              f"  next: cci predict {summary['run_id']} PATH   |   cci refine {summary['run_id']}   |   "
              f"cci lineage show {summary['clustering_artifact_id']}", highlight=False, soft_wrap=True)


@app.command()
def refine(
    run_id: str = typer.Argument(..., help="A finished clustering run (see `cci cluster`)."),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="Re-clustering rounds after the warm-up."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Training steps per round."),
    lam: Optional[float] = typer.Option(None, "--lam", help="Weight of the k-means term in J = J_CE + lam * J_kmeans."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Training batch size."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for everything random."),
    device: Optional[str] = typer.Option(None, "--device", help="cuda or cpu (default: cuda when present)."),
    option: list[str] = typer.Option([], "--set", help="Any other RefineConfig field, as NAME=VALUE (repeatable)."),
    new_run_id: Optional[str] = typer.Option(None, "--run-id", help="Name of the refined run (default: RUN-refined)."),
    store: Optional[str] = StoreOpt, dask_address: Optional[str] = DaskOpt, workers: Optional[int] = WorkersOpt,
    as_json: bool = JsonOpt, quiet: bool = QuietOpt, verbose: bool = VerboseOpt,
):
    """Train the CCI classifier on RUN's clusters (J = J_CE + lam * J_kmeans, re-clustering its
    embedding each round) and publish the refined clustering as a new run.

    An interrupted refinement resumes from its last finished round when run again.

    Example: cci refine RUN --rounds 2 --steps 800
    """
    from cci_core.refine.refine_run import check_refine, config_from_options
    options = {k: v for k, v in dict(rounds=rounds, steps=steps, lam=lam, batch_size=batch_size, seed=seed,
                                     device=device).items() if v is not None}
    options.update(name_values(option, "--set"))
    from flows.preflight import check_device
    run_guarded(check_device, options.get("device"))
    store_obj = read_store(store)
    config = run_guarded(config_from_options, options)
    run_guarded(check_refine, store_obj, run_id, config, new_run_id)
    options = {k: v for k, v in asdict(config).items()}
    from flows.refine import refine_flow  # after the checks: importing the flow (Prefect) takes seconds
    summary = run_flow(refine_flow, dask_address, workers or 1,
                       run_id, store_root=str(store_obj.root), options=options, new_run_id=new_run_id)
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    t = Table("round", "acc", "nmi", "ari", "silhouette", "selection", "changed", "seconds",
              title=f"CCI refinement of {run_id} (kept round {summary['chosen_round']})")

    def f(v):
        return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
    for r in summary["rounds"]:
        t.add_row(str(r.get("round")), f(r.get("acc")), f(r.get("nmi")), f(r.get("ari")), f(r.get("silhouette")),
                  f(r.get("selection_score")), f(r.get("changed")), f(r.get("wall_seconds")))
    out.print(t)
    out.print(f"Refined run [bold]{summary['run_id']}[/]: {len(summary['partitions'])} clusters, "
              f"{100 * summary['changed_from_parent']:.1f}% of images moved from run {run_id}\n"
              f"  classifier: {summary['classifier_artifact_id']}  ({summary['classifier']})\n"
              f"  clustering: {summary['clustering_artifact_id']}\n  report: {summary['report']}\n"
              f"  next: cci predict {summary['run_id']} PATH   |   cci train {summary['run_id']}",
              highlight=False, soft_wrap=True)


@app.command()
def predict(
    run_id: str = typer.Argument(..., help="A finished clustering run (see `cci cluster`)."),
    source: Optional[str] = typer.Argument(None, help="Images to label: folder, IDX, .npy/.npz, tar, builtin:digits."),
    corpus: Optional[str] = typer.Option(None, "--corpus", help="Label rows of this corpus instead of a source."),
    rows: Optional[str] = typer.Option(None, "--rows", help="Corpus rows START:STOP (default: all)."),
    fit: str = typer.Option("stretch", "--fit", help="How to resize other sizes: stretch, crop or pad."),
    output: Optional[str] = typer.Option(None, "--out", "-o", help="Write the labels to this Parquet file."),
    store: Optional[str] = StoreOpt, as_json: bool = JsonOpt,
):
    """Assign new images (or corpus rows) to the clusters of a finished run, with a confidence.

    Example: cci predict RUN ./new-images -o labels.parquet
    """
    from cci_core.cluster import cluster_run
    store_obj = read_store(store)
    if (source is None) == (corpus is None):
        fail("give either a SOURCE of images or --corpus NAME")
    quarantine = []
    if corpus:
        from cci_core.store.corpus import open_corpus
        c = run_guarded(open_corpus, store_obj, corpus)
        start, stop = 0, c.n_rows
        if rows:
            try:
                start, stop = (int(x) if x else d for x, d in zip(rows.split(":"), (0, c.n_rows)))
            except ValueError:
                fail(f"--rows {rows!r}: give START:STOP, e.g. 0:1000")
        if not 0 <= start < stop <= c.n_rows:
            fail(f"--rows {rows!r}: corpus {corpus!r} has rows 0..{c.n_rows}")
        df = run_guarded(cluster_run.predict, store_obj, run_id, c.images()[start:stop])
        df.insert(0, "row", range(start, stop))
    else:
        df, quarantine = run_guarded(cluster_run.predict_source, store_obj, run_id, source, fit)
    for q in quarantine:
        err.print(f"[yellow]quarantined[/] {q['source']}: {q['reason']}", highlight=False, soft_wrap=True)
    if quarantine and not len(df):
        fail(f"source {source}: none of its images could be read ({len(quarantine)} quarantined, listed above); "
             "nothing to label")
    if output:
        from cci_core.store.store import atomic_write_parquet
        atomic_write_parquet(output, df)
    if as_json:
        print(df.to_json(orient="records"))
        return
    counts = df["cluster"].value_counts().sort_index()
    out.print(f"{len(df):,} images labelled against run {run_id}: "
              + ", ".join(f"cluster {c}: {n:,}" for c, n in counts.items())
              + f"; mean confidence {df['confidence'].mean():.3f}" if len(df) else "no images to label",
                      highlight=False, soft_wrap=True)
    if output:
        out.print(f"  labels: {output}", highlight=False, soft_wrap=True)


@app.command()
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
    out_ = run_flow(generate_flow, dask_address, workers or 1,
                    run_id, dataset, store_root=str(store_obj.root), per_cluster=per_cluster,
                    threshold=threshold, seed=seed, models=models)
    if as_json:
        print(json.dumps(out_, indent=2, default=str))
        return
    out.print(f"Dataset [bold]{dataset}[/] v{out_['version']}: {out_['n_images']:,} images from the {out_['models']} "
              f"generators of run {run_id}, {out_['accepted']:,} accepted by the {out_['classifier']}\n"
              f"  folder: {out_['path']}\n  lineage id: {out_['artifact_id']}\n  samples: {out_['sample_grid']}\n"
              f"  next: cci datasets show {dataset}   |   cci lineage show {out_['artifact_id']}",
              highlight=False, soft_wrap=True)


@app.command("run")
def run_pipeline(
    source: str = typer.Argument("builtin:digits", help="What to ingest (default: scikit-learn's digits, no download)."),
    corpus: str = typer.Option("digits28", "--corpus", "-c", help="Corpus name."),
    size: Optional[str] = typer.Option("28x28", "--size", help="Image size HxW for the corpus (the models take 28, 32 or 64)."),
    channels: Optional[int] = typer.Option(1, "--channels", help="1 (gray) or 3 (RGB)."),
    k: str = typer.Option("10", "--k", "-k", help="Number of clusters, or a range to choose from: 5:30 or 5:30:5."),
    refine_rounds: int = typer.Option(1, "--refine-rounds", help="CCI refinement rounds."),
    refine_steps: int = typer.Option(150, "--refine-steps", help="Classifier training steps per round."),
    train_steps: int = typer.Option(150, "--train-steps", help="Generator training steps per cluster."),
    per_cluster: int = typer.Option(64, "--per-cluster", help="Images to publish per cluster."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset name (default: <corpus>-generated)."),
    seed: int = typer.Option(0, "--seed"),
    option: list[str] = typer.Option([], "--refine-set", help="Other RefineConfig fields, NAME=VALUE (repeatable)."),
    store: Optional[str] = StoreOpt, dask_address: Optional[str] = DaskOpt, workers: Optional[int] = WorkersOpt,
    as_json: bool = JsonOpt, quiet: bool = QuietOpt, verbose: bool = VerboseOpt,
):
    """The whole pipeline as one Prefect flow: ingest -> cluster -> refine -> train -> generate -> evaluate.

    Re-running it redoes only what is missing (stage outputs are named by their inputs).

    Example: cci run builtin:digits -k 10 --quiet
    """
    from cci_core.refine.refine_run import config_from_options
    refine_options = name_values(option, "--refine-set")
    refine_options = {key: value for key, value in asdict(run_guarded(config_from_options, refine_options)).items()
                      if key in refine_options}
    from flows.preflight import check_device, check_pipeline
    run_guarded(check_device, refine_options.get("device"))
    from cci_core.store.store import Store
    store_obj = Store(store)
    k_value = _k_option(k)
    run_guarded(check_pipeline, store_obj, source, corpus, parse_size(size), channels, dataset, k_value,
                {"--refine-steps": refine_steps, "--train-steps": train_steps, "--per-cluster": per_cluster})
    from flows.server import warm
    warm_state = None if dask_address else warm(store_obj.root)
    user_api = os.environ.get("PREFECT_API_URL") or (warm_state or {}).get("api_url")  # a server that outlives the run
    from flows.pipeline import pipeline_flow  # after the checks: importing the flow (Prefect) takes seconds
    summary = run_flow(pipeline_flow, dask_address, workers,
                       source, corpus, store_root=str(store_obj.root), size=parse_size(size),
                       channels=channels, k=k_value, refine_rounds=refine_rounds, refine_steps=refine_steps,
                       refine_options=refine_options, train_steps=train_steps, per_cluster=per_cluster,
                       dataset=dataset, seed=seed)
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    ds = summary["dataset"]

    def fmt(m):
        return "  ".join(f"{key}={m[key]:.3f}" for key in ("acc", "nmi", "ari", "silhouette") if key in m)
    out.print(f"[bold]Pipeline on {corpus}[/] v{summary['corpus_version']} ({summary['ingest_added']} new images)\n"
              f"  clustering: run {summary['cluster_run']}  {fmt(summary['clustering_metrics'])}\n"
              f"  refined:    run {summary['refined_run']}  {fmt(summary['refined_metrics'])}\n"
              f"  dataset:    {ds['dataset']} v{ds['version']} ({ds['n_images']} images, {ds['accepted']} accepted)"
              f" at {ds['path']}\n  evaluation: {summary['evaluation_report']}\n"
              f"  lineage:    cci lineage show {ds['artifact_id']}\n"
              f"  read it:    cci datasets show {ds['dataset']}   (or plain zarr + pyarrow, see its card.json)\n"
              "  Prefect UI: " + (f"{user_api.removesuffix('/api')} (flow runs, artifacts, assets)" if user_api else
                                  "this run used a temporary server; `cci server start` (or export "
                                  "PREFECT_API_URL=http://127.0.0.1:4200/api, then `prefect server start`) and "
                                  "re-run to watch it in the UI"),
              highlight=False, soft_wrap=True)


@app.command()
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
        print(json.dumps(res, indent=2, default=str))
        return
    if not res["changed"]:
        out.print(res["message"], highlight=False, soft_wrap=True)
        return
    d = res["drift"]
    out.print(f"Refreshed {corpus} to v{res['corpus_version']}: {d['n_new']} new images, "
              f"{100 * d['low_confidence']:.1f}% low confidence, size shift {d['size_shift']:.3f}\n"
              f"  retrained clusters: {res['retrained'] or 'none'}; carried over: {res['carried_over']}\n"
              f"  new run: {res['run_id']}\n  dataset: {res['dataset']['dataset']} v{res['dataset']['version']}",
              highlight=False, soft_wrap=True)


@datasets_app.command("list")
def datasets_list(store: Optional[str] = StoreOpt, as_json: bool = JsonOpt):
    """Datasets in the store with their committed versions.

    Example: cci datasets list --json
    """
    from cci_core.store.datasets import dataset_versions, list_datasets, open_dataset
    s = read_store(store)
    rows = [{"name": n, "versions": dataset_versions(n, s), "latest": open_dataset(n, store=s).version}
            for n in list_datasets(s)]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    t = Table("dataset", "latest", "versions", "images (latest)")
    for r in rows:
        t.add_row(r["name"], f"v{r['latest']}", ", ".join(f"v{v}" for v in r["versions"]),
                  f"{len(open_dataset(r['name'], store=s)):,}")
    out.print(t)


@datasets_app.command("show")
def datasets_show(name: str = typer.Argument(..., help="Dataset name."),
                  version: str = typer.Option("latest", "--version", help="v<N>, N or latest."),
                  store: Optional[str] = StoreOpt, as_json: bool = JsonOpt):
    """A dataset version's card: where its images came from, counts, how to read it.

    Example: cci datasets show fmnist-gen --version v2
    """
    from rich.markup import escape

    from cci_core.store.datasets import open_dataset
    ds = run_guarded(open_dataset, name, version, store=read_store(store))
    card = ds.card
    if as_json:
        print(json.dumps(card, indent=2, default=str))
        return
    m = ds.manifest
    out.print(f"[bold]{ds.name}[/] v{ds.version}  {len(ds):,} images {'x'.join(map(str, card['shape']))} uint8\n"
              f"  path: {ds.path}\n  {card.get('description', '')}\n"
              f"  lineage id: {card.get('lineage', {}).get('artifact_id')}\n  read it: {escape(card['how_to_read'])}",
              highlight=False, soft_wrap=True)
    if "cluster" in m:
        names = {str(c): e.get("name", "") for c, e in (card.get("clusters") or {}).items()}
        t = Table("cluster", "name (majority source label, purity)", "images", "accepted", "mean confidence")
        for c, g in m.groupby("cluster"):
            t.add_row(str(c), names.get(str(c), ""), str(len(g)), str(int(g["accepted"].sum())) if "accepted" in g else "",
                      f"{g['confidence'].mean():.3f}" if "confidence" in g else "")
        out.print(t)


@datasets_app.command("export")
def datasets_export(name: str = typer.Argument(..., help="Dataset name."),
                    to: str = typer.Argument(..., help="A folder (imagefolder: PNG files + metadata.csv) or a "
                                                       ".parquet file (Hugging Face Image column + manifest)."),
                    version: str = typer.Option("latest", "--version", help="v<N>, N or latest."),
                    fmt: str = typer.Option("auto", "--format",
                                            help="imagefolder, parquet, or auto (parquet when TO ends in .parquet)."),
                    store: Optional[str] = StoreOpt):
    """Export a dataset version to an imagefolder (PNGs + metadata.csv with file_name and the cluster
    labels, for datasets.load_dataset("imagefolder", data_dir=TO)) or to one Parquet file.

    Example: cci datasets export gen ./gen-png --format imagefolder
    """
    from cci_core.store.datasets import export_parquet, export_png, open_dataset
    if fmt not in ("auto", "imagefolder", "parquet"):
        fail(f"--format {fmt!r}: use imagefolder, parquet or auto")
    as_parquet = fmt == "parquet" or (fmt == "auto" and to.endswith(".parquet"))
    ds = run_guarded(open_dataset, name, version, store=read_store(store))
    target = Path(to)
    if as_parquet and target.is_dir():
        fail(f"{to} is a folder: give a new .parquet file path, or a folder path (without .parquet) for PNGs")
    if not as_parquet and target.exists() and not target.is_dir():
        fail(f"{to} is a file: give a folder for the PNGs, or a path ending in .parquet")
    try:
        path = export_parquet(ds, to) if as_parquet else export_png(ds, to)
    except OSError as exc:  # a read-only or full disk, a parent that is a file
        fail(f"cannot write {to}: {exc.strerror or exc}")
    out.print(f"Exported {ds.name} v{ds.version} ({len(ds):,} images) to {path}", highlight=False, soft_wrap=True)


@corpus_app.command("info")
def corpus_info(name: str = typer.Argument(..., help="Corpus name."),
                version: Optional[int] = typer.Option(None, "--version", parser=lambda t: _version(t),
                                                      metavar="VERSION", help="3, v3 or latest (default: latest)."),
                store: Optional[str] = StoreOpt, as_json: bool = JsonOpt):
    """Versions, size, shape, label counts, duplicates and quarantined files of a corpus.

    Example: cci corpus info fmnist --version v1
    """
    from cci_core.store.corpus import open_corpus
    c = run_guarded(open_corpus, read_store(store), name, version)
    info = c.info()
    if as_json:
        info["quarantine"] = c.quarantine().to_dict("records")
        print(json.dumps(info, indent=2, default=str))
        return
    out.print(f"[bold]{name}[/] v{info['version']}  {info['n_rows']:,} images  "
              f"{'x'.join(map(str, info['shape']))} uint8  (chunks of {info['chunk_rows']} rows)\n"
              f"  path: {info['path']}\n  lineage id: {info['artifact_id']}", highlight=False)
    t = Table("version", "rows", "added", "duplicates", "quarantined", "source", "created")
    for v in info["versions"]:
        t.add_row(str(v["version"]), f"{v['n_rows']:,}", f"{v['added']:,}", f"{v['duplicates']:,}",
                  str(v["quarantined"]), v["source"], v["created_at"][:19])
    out.print(t)
    if info["label_counts"]:
        out.print("labels: " + ", ".join(f"{k}: {v:,}" for k, v in info["label_counts"].items()), highlight=False)
    if info["split_counts"]:
        out.print("splits: " + ", ".join(f"{k}: {v:,}" for k, v in info["split_counts"].items()), highlight=False)
    q = c.quarantine()
    out.print(f"quarantined: {len(q)}")
    for r in q.head(20).itertuples():
        out.print(f"  {r.source}: {r.reason}", highlight=False)


@corpus_app.command("list")
def corpus_list(store: Optional[str] = StoreOpt):
    """Corpora in the store.

    Example: cci corpus list --store ./cci-store
    """
    from cci_core.store.corpus import open_corpus
    s = read_store(store)
    t = Table("corpus", "version", "rows", "shape", "lineage id")
    for name in s.corpora():
        c = open_corpus(s, name)
        t.add_row(name, str(c.version), f"{c.n_rows:,}", "x".join(map(str, c.shape.hwc)), c.artifact_id or "")
    out.print(t)


def _label(art) -> str:
    metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(art.metrics.items())[:6])
    return f"[bold]{art.id}[/] {art.name}  [dim]{art.uri}[/]" + (f"  ({metrics})" if metrics else "")


@lineage_app.command("show")
def lineage_show(artifact_id: str = typer.Argument(..., help="Artifact id (or a unique prefix), KIND:NAME "
                                                               "(corpus:fmnist@v2, dataset:gen@v1, "
                                                               "clustering:RUN/clustering) or a NAME that only "
                                                               "one artifact has (fmnist@v2; fmnist = its latest)."),
                 downstream: bool = typer.Option(False, "--downstream", help="Show what was made from it instead."),
                 depth: Optional[int] = typer.Option(None, "--depth", min=0, help="Levels to show (default: all)."),
                 store: Optional[str] = StoreOpt, as_json: bool = JsonOpt):
    """The upstream tree of an artifact (what made it), or its downstream tree. Each artifact is
    shown once; a shared ancestor met again is a one-line reference.

    Example: cci lineage show dataset:gen@v1 --depth 2
    """
    from cci_core.store.lineage import LineageStore
    lin = LineageStore(read_store(store).lineage_url)
    artifact_id = run_guarded(lin.resolve, artifact_id).id
    walk = lin.downstream if downstream else lin.upstream
    tree = run_guarded(walk, artifact_id, depth=depth, once=True)
    key = "outputs" if downstream else "inputs"
    if as_json:
        def plain(node):
            return {"role": node["role"], **node["artifact"].to_dict(), key: [plain(n) for n in node[key]],
                    **{k: node[k] for k in ("seen", "truncated") if k in node}}
        print(json.dumps(plain(tree), indent=2, default=str))
        return
    root = Tree(_label(tree["artifact"]))

    def add(parent, node):
        for child in node[key]:
            art = child["artifact"]
            if child.get("seen"):
                parent.add(f"[cyan]{child['role']}[/]: [bold]{art.id}[/] {art.name}  [dim](shown above)[/]")
                continue
            more = f"  [dim]({child['truncated']} more below; raise --depth)[/]" if child.get("truncated") else ""
            add(parent.add(f"[cyan]{child['role']}[/]: " + _label(art) + more), child)
    add(root, tree)
    art = tree["artifact"]
    out.print(root)
    out.print(f"  kind: {art.kind}  created: {art.created_at:%Y-%m-%d %H:%M:%S}  code: {art.code_version}\n"
              f"  params: {json.dumps(art.params, default=str)}\n  producer: {json.dumps(art.producer)}",
              highlight=False, soft_wrap=True)


@lineage_app.command("export")
def lineage_export(ref: Optional[str] = typer.Argument(None, help="Export this artifact's lineage (id, KIND:NAME "
                                                                   "or NAME); default: the whole store."),
                   fmt: str = typer.Option("openlineage", "--format",
                                           help="openlineage (JSON Lines of run events), prov (PROV-JSON) or dot "
                                                "(Graphviz)."),
                   output: Optional[str] = typer.Option(None, "--output", "-o", help="Write here (default: stdout)."),
                   downstream: bool = typer.Option(False, "--downstream", help="What was made from REF instead."),
                   store: Optional[str] = StoreOpt):
    """Export lineage as OpenLineage run events, W3C PROV-JSON or a Graphviz graph (store-relative URIs).

    Example: cci lineage export dataset:gen@v1 --format dot -o gen.dot && dot -Tsvg gen.dot -o gen.svg
    """
    from cci_core.store.lineage import LineageStore
    from cci_core.store.lineage_export import FORMATS, export
    if fmt not in FORMATS:
        fail(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if output and Path(output).is_dir():
        fail(f"-o {output} is a folder: give a file path")
    lin = LineageStore(read_store(store).lineage_url)
    text = run_guarded(export, lin, fmt, ref, downstream)
    if not output:
        sys.stdout.write(text)
        return
    try:
        Path(output).write_text(text)
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}")
    err.print(f"Wrote {fmt} lineage to {output}", highlight=False, soft_wrap=True)


@lineage_app.command("list")
def lineage_list(kind: Optional[str] = typer.Option(None, "--kind", help="Only this kind (corpus, clustering, ...)."),
                 store: Optional[str] = StoreOpt, as_json: bool = JsonOpt):
    """Artifacts in the lineage store, newest first.

    Example: cci lineage list --kind clustering
    """
    from cci_core.store.lineage import LineageStore
    lin = LineageStore(read_store(store).lineage_url)
    if kind and kind not in (known := lin.kinds()):
        fail(f"--kind {kind!r}: no artifact of that kind; the store holds {', '.join(known) or 'none yet'}")
    arts = lin.list(kind=kind)
    if as_json:
        print(json.dumps([a.to_dict() for a in arts], indent=2, default=str))
        return
    t = Table("id", "kind", "name", "created", "inputs")
    for a in arts:
        t.add_row(a.id, a.kind, a.name, f"{a.created_at:%Y-%m-%d %H:%M:%S}", ", ".join(i for i, _ in a.inputs))
    out.print(t)


from flows.cli_features import register as _register_features  # noqa: E402
from flows.cli_palette import register as _register_palette  # noqa: E402
from flows.cli_server import register as _register_server  # noqa: E402
from flows.cli_train import register as _register_train  # noqa: E402

_register_train(app)
_register_palette(app)
_register_features(app)
_register_server(app)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":
    sys.exit(app())
