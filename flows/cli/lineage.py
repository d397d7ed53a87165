"""`cci lineage show|export|list`: what made an artifact and what was made from it."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.tree import Tree

from flows.cli.common import err, fail, lit, out, print_json, read_store, run_guarded
from flows.cli.options import JsonOpt, StoreOpt


def _label(art) -> str:
    metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(art.metrics.items())[:6])
    return f"[bold]{lit(art.id)}[/] {lit(art.name)}  [dim]{lit(art.uri)}[/]" + (f"  ({lit(metrics)})" if metrics else "")


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
    lin = run_guarded(LineageStore, read_store(store).lineage_url)
    artifact_id = run_guarded(lin.resolve, artifact_id).id
    walk = lin.downstream if downstream else lin.upstream
    tree = run_guarded(walk, artifact_id, depth=depth, once=True)
    key = "outputs" if downstream else "inputs"
    if as_json:
        def plain(node):
            return {"role": node["role"], **node["artifact"].to_dict(), key: [plain(n) for n in node[key]],
                    **{k: node[k] for k in ("seen", "truncated") if k in node}}
        print_json(plain(tree))
        return
    root = Tree(_label(tree["artifact"]))

    def add(parent, node):
        for child in node[key]:
            art = child["artifact"]
            if child.get("seen"):
                parent.add(f"[cyan]{lit(child['role'])}[/]: [bold]{lit(art.id)}[/] {lit(art.name)}  [dim](shown above)[/]")
                continue
            more = f"  [dim]({child['truncated']} more below; raise --depth)[/]" if child.get("truncated") else ""
            add(parent.add(f"[cyan]{lit(child['role'])}[/]: " + _label(art) + more), child)
    add(root, tree)
    art = tree["artifact"]
    out.print(root)
    out.print(f"  kind: {art.kind}  created: {art.created_at:%Y-%m-%d %H:%M:%S}  code: {art.code_version}\n"
              f"  params: {json.dumps(art.params, default=str)}\n  producer: {json.dumps(art.producer)}",
              highlight=False, soft_wrap=True, markup=False)


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
    lin = run_guarded(LineageStore, read_store(store).lineage_url)
    text = run_guarded(export, lin, fmt, ref, downstream)
    if not output:
        sys.stdout.write(text)
        return
    try:
        Path(output).write_text(text)
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}")
    err.print(f"Wrote {fmt} lineage to {output}", highlight=False, soft_wrap=True, markup=False)


def lineage_list(kind: Optional[str] = typer.Option(None, "--kind", help="Only this kind (corpus, clustering, ...)."),
                 store: Optional[str] = StoreOpt, as_json: bool = JsonOpt):
    """Artifacts in the lineage store, newest first.

    Example: cci lineage list --kind clustering
    """
    from cci_core.store.lineage import LineageStore
    lin = run_guarded(LineageStore, read_store(store).lineage_url)
    if kind and kind not in (known := lin.kinds()):
        fail(f"--kind {kind!r}: no artifact of that kind; the store holds {', '.join(known) or 'none yet'}")
    arts = lin.list(kind=kind)
    if as_json:
        print_json([a.to_dict() for a in arts])
        return
    t = Table("id", "kind", "name", "created", "inputs")
    for a in arts:
        t.add_row(lit(a.id), lit(a.kind), lit(a.name), f"{a.created_at:%Y-%m-%d %H:%M:%S}",
                  lit(", ".join(i for i, _ in a.inputs)))
    out.print(t)
