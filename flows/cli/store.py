"""`cci store verify`: check every array, table, record, weight file and lineage row of a store
(:mod:`cci_core.store.verify`), straight from the files: no Prefect server, no Dask cluster."""
from __future__ import annotations

from typing import Optional

import typer

from flows.cli.common import err, fail, out, print_json, run_guarded
from flows.cli.options import JsonOpt, StoreOpt

MAX_IN_ERROR = 5  # damaged things named in the one error line; the report above lists them all


def store_verify(deep: bool = typer.Option(False, "--deep", help="Also check each corpus and dataset row's image_id "
                                                                 "(sha256 of its pixels) against the pixels: finds "
                                                                 "damage in arrays written before chunk checksums."),
                 store: Optional[str] = StoreOpt, as_json: bool = JsonOpt):
    """Check that everything in the store reads back as written; list what is damaged and what depends on it.

    Every Zarr chunk decodes and matches its checksum; every Parquet, JSON, .npy and safetensors file loads.

    The lineage database passes its integrity check and each artifact it records exists. Exit code 1 when anything is damaged.

    Example: cci store verify --deep --store ./cci-store
    """
    from cci_core.store.integrity import repair_hint
    from cci_core.store.store import Store
    from cci_core.store.verify import verify_store
    # not read_store: its pre-flight refuses a damaged lineage database, which verify reports with the rest
    s = Store(store)
    if not s.is_local:
        from flows.preflight import check_object_store
        run_guarded(check_object_store, str(s.root))  # the bucket answers and $CCI_LINEAGE_URL is set
    report = run_guarded(verify_store, s, deep=deep)
    if as_json:
        print_json(report.to_json())
    else:
        for d in report.damage:
            out.print(f"damaged: {d.line()}", highlight=False, markup=False, soft_wrap=True)
            if d.owners:
                out.print(f"  belongs to: {', '.join(d.owners)}", highlight=False, markup=False, soft_wrap=True)
            if d.dependents:
                out.print(f"  depends on it ({len(d.dependents)}): {', '.join(d.dependents)}",
                          highlight=False, markup=False, soft_wrap=True)
            out.print(f"  repair: {repair_hint(d.path)}", highlight=False, markup=False, soft_wrap=True)
        if report.without_checksum:
            old = report.without_checksum
            listed = ", ".join(old[:MAX_IN_ERROR]) + (" ..." if len(old) > MAX_IN_ERROR else "")
            how = "their rows' pixels were checked against image_id" if deep else "--deep checks corpus and dataset pixels"
            err.print(f"note: {len(old)} arrays have no chunk checksums (written before them): {listed}; {how} "
                      "(docs/reliability.md)", highlight=False, markup=False, soft_wrap=True)
    if not report.ok:
        named = "; ".join(d.line() for d in report.damage[:MAX_IN_ERROR])
        more = f"; and {len(report.damage) - MAX_IN_ERROR} more" if len(report.damage) > MAX_IN_ERROR else ""
        hints = {repair_hint(d.path) for d in report.damage}
        repair = hints.pop() if len(hints) == 1 else "restore each from a backup or make it again (docs/reliability.md)"
        fail(f"{len(report.damage)} damaged in store {s.root}: {named}{more}; {repair}"
             f"{'; what depends on each is listed above' if not as_json and any(d.dependents for d in report.damage) else ''}")
    if not as_json:
        out.print(f"store OK: {report.summary()}", highlight=False, markup=False, soft_wrap=True)
