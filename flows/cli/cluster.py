"""`cci cluster` (a clustering run of a corpus) and `cci predict` (new images against a run)."""
from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from cci_core.cluster.choices import PCA_FIT_ROWS
from flows.cli.common import (
    err,
    fail,
    lit,
    out,
    parse_k,
    parse_number,
    parse_version,
    print_json,
    read_store,
    run_flow,
    run_guarded,
)
from flows.cli.options import DaskOpt, JsonOpt, QuietOpt, SeedOpt, StoreOpt, VerboseOpt, WorkersOpt


def cluster(
    corpus: str = typer.Argument(..., help="Corpus name in the store."),
    k: str = typer.Option("10", "--k", "-k", help="Number of clusters, or a range to choose from: 5:30 or 5:30:5."),
    algorithm: str = typer.Option("kmeans", "--algorithm", "-a",
                                  help="kmeans (all rows), gmm, agglomerative, dbscan or hdbscan (on a sample, "
                                       "extended to every row)."),
    embedding: str = typer.Option("pca", "--embedding", help="Cluster the PCA projections (pca) or their UMAP (umap)."),
    components: str = typer.Option("50", "--components", help="PCA components, or a variance ratio such as 0.9."),
    whiten: bool = typer.Option(False, "--whiten", help="Scale the PCA projections to unit variance."),
    solver: str = typer.Option("auto", "--solver", help="PCA solver: auto (cov up to 4,096 values per image, "
                                                        "randomized above), cov, randomized, full or tsqr."),
    pca_fit_rows: int = typer.Option(PCA_FIT_ROWS, "--pca-fit-rows",
                                     help="Rows the PCA is fitted on (evenly spaced blocks of a larger corpus; "
                                          "0 = every row). Every row is projected."),
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
    seed: int = SeedOpt,
    version: Optional[int] = typer.Option(None, "--version", parser=parse_version,
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
    k_value: int | str | None = parse_k(k)
    if algorithm in ("dbscan", "hdbscan") and k == "10":
        k_value = None  # the density algorithms find their own number of clusters
    options = dict(solver=solver, pca_fit_rows=pca_fit_rows, umap_dim=umap_dim, umap_neighbors=umap_neighbors,
                   umap_sample=umap_sample, sample_size=sample_size, k_criterion=k_criterion, eps=eps, min_samples=min_samples,
                   min_cluster_size=min_cluster_size)
    main = dict(k=k_value, algorithm=algorithm, embedding=embedding,
                n_components=parse_number(components, "--components"), whiten=whiten, seed=seed)
    store_obj = read_store(store)
    params = ClusterParams(**main, **options)
    # everything checkable is checked here, before a server or a cluster is started
    run_guarded(check_request, store_obj, corpus, params, version, run_id)
    from cci_core.store.runs import new_run_id
    run_id = run_id or new_run_id(corpus)  # named here, so the flow run is tagged run:<id> from its start
    from flows.cluster import cluster_flow  # after the checks: importing the flow (Prefect) takes seconds
    from flows.settings import ClusterSettings
    summary = run_flow(cluster_flow, dask_address, workers,
                       ClusterSettings(corpus, store_root=str(store_obj.root), params=params, version=version,
                                       run_id=run_id))
    if as_json:
        print_json(summary)
        return
    m = summary["metrics"]
    if summary["choose_k"]:
        t = Table("k", "inertia", "silhouette", title=f"choosing k ({summary['choose_k']['criterion']})")
        for row in summary["choose_k"]["scores"]:
            t.add_row(str(row["k"]), f"{row['inertia']:.6g}",
                      "" if row["silhouette"] is None else f"{row['silhouette']:.4f}")
        out.print(t)
    out.print(f"Run [bold]{lit(summary['run_id'])}[/]: {summary['algorithm']} on {summary['embedding']} of corpus "
              f"{lit(corpus)} v{summary['corpus_version']} -> {summary['n_clusters']} clusters over "
              f"{summary['n_rows']:,} images" + (f" ({summary['n_noise']:,} noise)" if summary["n_noise"] else ""),
              highlight=False, soft_wrap=True)
    out.print("  " + "  ".join(f"{key}={m[key]:.4g}" for key in ("acc", "nmi", "ari", "purity", "silhouette",
                                                               "davies_bouldin", "inertia") if key in m),
              highlight=False, soft_wrap=True)
    out.print("  sizes: " + ", ".join(str(p["count"]) for p in summary["partitions"]), highlight=False, soft_wrap=True)
    if summary["extension"]:
        out.print(f"  note: {summary['extension']}", highlight=False, soft_wrap=True, markup=False)
    out.print(f"  clustering: {summary['clustering_artifact_id']}  pca: {summary['pca_artifact_id']}\n"
              f"  run folder: {summary['run_dir']}\n  report: {summary['report']}\n"
              f"  explorer: {next((p for p in summary['pictures'] if p.endswith('explore.html')), 'none')}\n"
              f"  next: cci predict {summary['run_id']} PATH   |   cci refine {summary['run_id']}   |   "
              f"cci lineage show {summary['clustering_artifact_id']}", highlight=False, soft_wrap=True, markup=False)


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
    from cci_core.predict import predict
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
        pixels = run_guarded(c.read_images, slice(start, stop))  # a damaged chunk is one line too
        df = run_guarded(predict.predict, store_obj, run_id, pixels)
        df.insert(0, "row", range(start, stop))
    else:
        df, quarantine = run_guarded(predict.predict_source, store_obj, run_id, source, fit)
    for q in quarantine:
        err.print(f"[yellow]quarantined[/] {lit(q['source'])}: {lit(q['reason'])}", highlight=False, soft_wrap=True)
    if quarantine and not len(df):
        fail(f"source {source}: none of its images could be read ({len(quarantine)} quarantined, listed above); "
             "nothing to label")
    if output:
        from cci_core.store.store import atomic_write_parquet
        run_guarded(atomic_write_parquet, output, df)  # a full or read-only disk: one line, no part left
    if as_json:
        print(df.to_json(orient="records"))
        return
    counts = df["cluster"].value_counts().sort_index()
    out.print(f"{len(df):,} images labelled against run {run_id}: "
              + ", ".join(f"cluster {c}: {n:,}" for c, n in counts.items())
              + f"; mean confidence {df['confidence'].mean():.3f}" if len(df) else "no images to label",
                      highlight=False, soft_wrap=True, markup=False)
    if output:
        out.print(f"  labels: {output}", highlight=False, soft_wrap=True, markup=False)
