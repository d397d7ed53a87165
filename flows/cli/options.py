"""The options many `cci` commands share, one typer Option each: the store, where flows run
(``--dask-address``, ``--workers``), ``--json``, ``--quiet`` / ``--verbose``, ``--seed`` and ``--device``.

``--dask-address`` and ``--workers`` are checked while the command line is parsed, before the
command's imports and any server start; ``--quiet`` / ``--verbose`` are eager, so the verbosity
is set (:func:`flows.cli.output.set_mode`) before anything else prints.
"""
from __future__ import annotations

import typer

from flows.cli import output
from flows.cli.common import fail, run_guarded


def _dask_address_now(value: str | None) -> str | None:
    """Checked while the command line is parsed: before the command's imports and any server."""
    from flows.preflight import check_dask_address
    run_guarded(check_dask_address, value)
    return value


def _workers_now(value: int | None) -> int | None:
    if value is not None and value < 1:
        fail(f"--workers {value}: give at least 1 worker process")
    return value


def _verbosity(value: str):
    """The callback of ``--quiet`` (VALUE quiet) or ``--verbose`` (VALUE verbose)."""
    def callback(flag: bool) -> bool:
        if flag:
            if output.mode() not in (output.NORMAL, value):
                raise typer.BadParameter("--quiet and --verbose exclude each other")
            output.set_mode(value)
        return flag
    return callback


StoreOpt = typer.Option(None, "--store", envvar="CCI_STORE",
                        help="Artifact store root: a folder (default ./cci-store, or $CCI_STORE) or a URL "
                             "(s3://bucket/prefix, with $CCI_LINEAGE_URL set).")
DaskOpt = typer.Option(None, "--dask-address", envvar="CCI_DASK_ADDRESS", callback=_dask_address_now,
                       help="Use an existing Dask scheduler (tcp://host:port) instead of a LocalCluster.")
WorkersOpt = typer.Option(None, "--workers", callback=_workers_now,
                          help="LocalCluster worker processes (default: cores, at most 4).")
JsonOpt = typer.Option(False, "--json", help="Print the result as JSON on stdout (for other programs).")
QuietOpt = typer.Option(False, "--quiet", "-q", is_eager=True, callback=_verbosity(output.QUIET),
                        help="Print only the final summary (and errors).")
VerboseOpt = typer.Option(False, "--verbose", "-v", is_eager=True, callback=_verbosity(output.VERBOSE),
                          help="Also print Prefect's own log lines and the Dask workers' logs.")
SeedOpt = typer.Option(0, "--seed", help="Every random draw derives from it.")
DeviceOpt = typer.Option(None, "--device", help="cuda or cpu (default: cuda when present).")
