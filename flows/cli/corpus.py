"""`cci corpus info|list`: the corpora in the store."""
from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from flows.cli.common import lit, out, parse_version, print_json, read_store, run_guarded
from flows.cli.options import JsonOpt, StoreOpt


def corpus_info(name: str = typer.Argument(..., help="Corpus name."),
                version: Optional[int] = typer.Option(None, "--version", parser=parse_version,
                                                      metavar="VERSION", help="3, v3 or latest (default: latest)."),
                store: Optional[str] = StoreOpt, as_json: bool = JsonOpt):
    """Versions, size, shape, label counts, duplicates and quarantined files of a corpus.

    Example: cci corpus info fmnist --version v1
    """
    from cci_core.store.corpus import open_corpus
    c = run_guarded(open_corpus, read_store(store), name, version)
    info = run_guarded(c.info)  # reads index.parquet and quarantine.parquet: damage is one line
    if as_json:
        info["quarantine"] = run_guarded(c.quarantine).to_dict("records")
        print_json(info)
        return
    out.print(f"[bold]{lit(name)}[/] v{info['version']}  {info['n_rows']:,} images  "
              f"{'x'.join(map(str, info['shape']))} uint8  (chunks of {info['chunk_rows']} rows)\n"
              f"  path: {lit(info['path'])}\n  lineage id: {info['artifact_id']}", highlight=False)
    t = Table("version", "rows", "added", "duplicates", "quarantined", "source", "created")
    for v in info["versions"]:
        t.add_row(str(v["version"]), f"{v['n_rows']:,}", f"{v['added']:,}", f"{v['duplicates']:,}",
                  str(v["quarantined"]), lit(v["source"]), v["created_at"][:19])
    out.print(t)
    if info["label_counts"]:
        out.print("labels: " + ", ".join(f"{k}: {v:,}" for k, v in info["label_counts"].items()), highlight=False, markup=False)
    if info["split_counts"]:
        out.print("splits: " + ", ".join(f"{k}: {v:,}" for k, v in info["split_counts"].items()), highlight=False, markup=False)
    q = c.quarantine()
    out.print(f"quarantined: {len(q)}")
    for r in q.head(20).itertuples():
        out.print(f"  {r.source}: {r.reason}", highlight=False, markup=False)


def corpus_list(store: Optional[str] = StoreOpt):
    """Corpora in the store.

    Example: cci corpus list --store ./cci-store
    """
    from cci_core.store.corpus import open_corpus
    s = read_store(store)
    t = Table("corpus", "version", "rows", "shape", "lineage id")
    for name in s.corpora():
        try:
            c = open_corpus(s, name)
        except ValueError:  # a damaged corpus.json: listed as such, the others still shown
            t.add_row(lit(name), "damaged", "", "", f"see `cci corpus info {lit(name)}`")
            continue
        t.add_row(lit(name), str(c.version), f"{c.n_rows:,}", "x".join(map(str, c.shape.hwc)), c.artifact_id or "")
    out.print(t)
