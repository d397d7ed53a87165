"""The `cci` command line: starts flows and reads the store. Each command ends by saying
what it made (artifact ids and paths) so the next command can be typed from its output."""
from __future__ import annotations

import json
import os
import sys
from typing import Optional

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here

import typer
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from cci_core.store import Store

app = typer.Typer(help="CCI: cluster image corpora, learn the clusters, generate new images - "
                       "on Prefect + Dask, with lineage for every artifact.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
corpus_app = typer.Typer(help="Look at corpora in the store.", no_args_is_help=True)
lineage_app = typer.Typer(help="Query the lineage store.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")
app.add_typer(lineage_app, name="lineage")

out = Console()
err = Console(stderr=True)

StoreOpt = typer.Option(None, "--store", envvar="CCI_STORE",
                        help="Artifact store root (default ./cci-store, or $CCI_STORE).")
DaskOpt = typer.Option(None, "--dask-address", envvar="CCI_DASK_ADDRESS",
                       help="Use an existing Dask scheduler (tcp://host:port) instead of a LocalCluster.")
WorkersOpt = typer.Option(None, "--workers", help="LocalCluster worker processes (default: cores, at most 4).")
JsonOpt = typer.Option(False, "--json", help="Print the result as JSON on stdout (for other programs).")


def fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _expected_errors():
    from cci_core.corpus import UnknownCorpusError
    from cci_core.lineage import UnknownArtifactError
    return (ValueError, LookupError, FileNotFoundError, UnknownCorpusError, UnknownArtifactError)


def run_guarded(fn, *args, **kwargs):
    """Run a flow or library call; expected errors become one red line and exit code 1."""
    try:
        return fn(*args, **kwargs)
    except _expected_errors() as exc:
        fail(str(exc))


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
    store: Optional[str] = StoreOpt, dask_address: Optional[str] = DaskOpt, workers: Optional[int] = WorkersOpt,
    as_json: bool = JsonOpt,
):
    """Ingest SOURCE into a corpus: a new version holding only images not stored yet.

    Corrupt or unreadable files are quarantined (listed with reasons), not fatal.
    """
    from flows.ingest import ingest_flow
    from flows.runtime import dask_task_runner, prefect_api
    shape = parse_size(size)
    store_obj = Store(store)
    with prefect_api():
        flow = ingest_flow.with_options(task_runner=dask_task_runner(dask_address, workers))
        summary = run_guarded(flow, source, corpus, store_root=str(store_obj.root), size=shape,
                              channels=channels, fit=fit, label_from_folder=label_from_folder,
                              batch_size=batch_size)
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


@corpus_app.command("info")
def corpus_info(name: str = typer.Argument(..., help="Corpus name."),
                version: Optional[int] = typer.Option(None, "--version", help="A version (default: latest)."),
                store: Optional[str] = StoreOpt, as_json: bool = JsonOpt):
    """Versions, size, shape, label counts, duplicates and quarantined files of a corpus."""
    from cci_core.corpus import open_corpus
    c = run_guarded(open_corpus, Store(store), name, version)
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
    """Corpora in the store."""
    from cci_core.corpus import open_corpus
    s = Store(store)
    t = Table("corpus", "version", "rows", "shape", "lineage id")
    for name in s.corpora():
        c = open_corpus(s, name)
        t.add_row(name, str(c.version), f"{c.n_rows:,}", "x".join(map(str, c.shape.hwc)), c.artifact_id or "")
    out.print(t)


def _label(art) -> str:
    metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(art.metrics.items())[:6])
    return f"[bold]{art.id}[/] {art.name}  [dim]{art.uri}[/]" + (f"  ({metrics})" if metrics else "")


@lineage_app.command("show")
def lineage_show(artifact_id: str = typer.Argument(..., help="Artifact id (or a unique prefix)."),
                 downstream: bool = typer.Option(False, "--downstream", help="Show what was made from it instead."),
                 store: Optional[str] = StoreOpt, as_json: bool = JsonOpt):
    """The upstream tree of an artifact (what made it), or its downstream tree."""
    from cci_core.lineage import LineageStore
    lin = LineageStore(Store(store).lineage_url)
    tree = run_guarded(lin.downstream if downstream else lin.upstream, artifact_id)
    key = "outputs" if downstream else "inputs"
    if as_json:
        def plain(node):
            return {"role": node["role"], **node["artifact"].to_dict(), key: [plain(n) for n in node[key]]}
        print(json.dumps(plain(tree), indent=2, default=str))
        return
    root = Tree(_label(tree["artifact"]))

    def add(parent, node):
        for child in node[key]:
            add(parent.add(f"[cyan]{child['role']}[/]: " + _label(child["artifact"])), child)
    add(root, tree)
    art = tree["artifact"]
    out.print(root)
    out.print(f"  kind: {art.kind}  created: {art.created_at:%Y-%m-%d %H:%M:%S}  code: {art.code_version}\n"
              f"  params: {json.dumps(art.params, default=str)}\n  producer: {json.dumps(art.producer)}",
              highlight=False, soft_wrap=True)


@lineage_app.command("list")
def lineage_list(kind: Optional[str] = typer.Option(None, "--kind", help="Only this kind (corpus, clustering, ...)."),
                 store: Optional[str] = StoreOpt, as_json: bool = JsonOpt):
    """Artifacts in the lineage store, newest first."""
    from cci_core.lineage import LineageStore
    arts = LineageStore(Store(store).lineage_url).list(kind=kind)
    if as_json:
        print(json.dumps([a.to_dict() for a in arts], indent=2, default=str))
        return
    t = Table("id", "kind", "name", "created", "inputs")
    for a in arts:
        t.add_row(a.id, a.kind, a.name, f"{a.created_at:%Y-%m-%d %H:%M:%S}", ", ".join(i for i, _ in a.inputs))
    out.print(t)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":
    sys.exit(app())
