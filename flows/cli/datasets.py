"""`cci datasets list|show|export`: published dataset versions."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from flows.cli.common import fail, lit, out, print_json, read_store, run_guarded
from flows.cli.options import JsonOpt, StoreOpt


def datasets_list(store: Optional[str] = StoreOpt, as_json: bool = JsonOpt):
    """Datasets in the store with their committed versions.

    Example: cci datasets list --json
    """
    from cci_core.store.datasets import dataset_versions, list_datasets, open_dataset
    s = read_store(store)
    rows = run_guarded(lambda: [{"name": n, "versions": dataset_versions(n, s), "latest": open_dataset(n, store=s).version}
                                for n in list_datasets(s)])
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    t = Table("dataset", "latest", "versions", "images (latest)")
    for r in rows:
        t.add_row(lit(r["name"]), f"v{r['latest']}", ", ".join(f"v{v}" for v in r["versions"]),
                  f"{len(open_dataset(r['name'], store=s)):,}")
    out.print(t)


def datasets_show(name: str = typer.Argument(..., help="Dataset name."),
                  version: str = typer.Option("latest", "--version", help="v<N>, N or latest."),
                  store: Optional[str] = StoreOpt, as_json: bool = JsonOpt):
    """A dataset version's card: where its images came from, counts, how to read it.

    Example: cci datasets show fmnist-gen --version v2
    """
    from cci_core.store.datasets import open_dataset
    ds = run_guarded(open_dataset, name, version, store=read_store(store))
    card = run_guarded(getattr, ds, "card")  # card.json and manifest.parquet are checked when read
    if as_json:
        print_json(card)
        return
    m = run_guarded(getattr, ds, "manifest")
    out.print(f"[bold]{lit(ds.name)}[/] v{ds.version}  {len(ds):,} images {'x'.join(map(str, card['shape']))} uint8\n"
              f"  path: {lit(ds.path)}\n  {lit(card.get('description', ''))}\n"
              f"  lineage id: {card.get('lineage', {}).get('artifact_id')}\n  read it: {lit(card['how_to_read'])}",
              highlight=False, soft_wrap=True)
    if "cluster" in m:
        names = {str(c): e.get("name", "") for c, e in (card.get("clusters") or {}).items()}
        t = Table("cluster", "name (majority source label, purity)", "images", "accepted", "mean confidence")
        for c, g in m.groupby("cluster"):
            t.add_row(str(c), lit(names.get(str(c), "")), str(len(g)), str(int(g["accepted"].sum())) if "accepted" in g else "",
                      f"{g['confidence'].mean():.3f}" if "confidence" in g else "")
        out.print(t)


def datasets_export(name: str = typer.Argument(..., help="Dataset name."),
                    to: str = typer.Argument(..., help="A folder (imagefolder: PNG files + metadata.csv; fiftyone: "
                                                       "a FiftyOne import folder) or a .parquet file (Hugging "
                                                       "Face Image column + manifest)."),
                    version: str = typer.Option("latest", "--version", help="v<N>, N or latest."),
                    fmt: str = typer.Option("auto", "--format",
                                            help="imagefolder, parquet, fiftyone, or auto (parquet when TO ends "
                                                 "in .parquet, else imagefolder)."),
                    store: Optional[str] = StoreOpt):
    """Export a dataset version to an imagefolder (PNGs + metadata.csv with file_name and the cluster
    labels, for datasets.load_dataset("imagefolder", data_dir=TO)), to one Parquet file, or to a folder
    FiftyOne imports (images, cluster labels with confidence, the scoring classifier's embeddings, and
    TO/fiftyone_import.py, which loads it: docs/datasets.md).

    Example: cci datasets export gen ./gen-png --format imagefolder
    """
    from cci_core.store.datasets import export_parquet, export_png, open_dataset
    if fmt not in ("auto", "imagefolder", "parquet", "fiftyone"):
        fail(f"--format {fmt!r}: use imagefolder, parquet, fiftyone or auto")
    as_parquet = fmt == "parquet" or (fmt == "auto" and to.endswith(".parquet"))
    s = read_store(store)
    ds = run_guarded(open_dataset, name, version, store=s)
    target = Path(to)
    if as_parquet and target.is_dir():
        fail(f"{to} is a folder: give a new .parquet file path, or a folder path (without .parquet) for PNGs")
    if not as_parquet and target.exists() and not target.is_dir():
        fail(f"{to} is a file: give a folder for the PNGs, or a path ending in .parquet")
    try:
        if fmt == "fiftyone":
            from cci_core.generate.dataset_fiftyone import export_dataset_fiftyone
            path = export_dataset_fiftyone(s, ds, to)
        else:
            path = export_parquet(ds, to) if as_parquet else export_png(ds, to)
    except OSError as exc:  # a read-only or full disk, a parent that is a file
        fail(f"cannot write {to}: {exc.strerror or exc}")
    except (ValueError, LookupError) as exc:  # a damaged chunk (integrity.ChunkDamagedError), a missing run
        fail(str(exc))
    out.print(f"Exported {ds.name} v{ds.version} ({len(ds):,} images) to {path}", highlight=False, soft_wrap=True, markup=False)
