"""The `cci` command line: starts flows and reads the store. Each command ends by saying
what it made (artifact ids and paths) so the next command can be typed from its output.

The commands are plain functions, one module per command group (``flows/cli/ingest.py``,
``cluster.py``, ...); :func:`register` puts them on the app, here and nowhere else. They share
:mod:`flows.cli.common` (consoles, errors, running a flow), :mod:`flows.cli.options` (the options
most commands take) and :mod:`flows.cli.output` (what the terminal shows while a flow runs).
Heavy imports (Prefect, the flows, pandas) happen inside the commands, after their checks.
"""
from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here
# OpenMP threads (torch's) that wait for work sleep instead of spinning: beside 2 busy processes on
# 2 cores, 30 training steps took 4.1x their idle time with spinning threads, 1.9x with sleeping
# ones (idle cost about 8%). libgomp reads it when torch loads it; the LocalCluster workers inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402

from flows.cli import (  # noqa: E402
    cluster,
    corpus,
    datasets,
    explore,
    features,
    generate,
    ingest,
    lineage,
    palette,
    refine,
    run,
    server,
    store,
    train,
)

# (name, function), in the order `cci --help` lists them
COMMANDS = (
    ("ingest", ingest.ingest), ("cluster", cluster.cluster), ("refine", refine.refine),
    ("predict", cluster.predict), ("generate", generate.generate), ("run", run.run_pipeline),
    ("refresh", run.refresh), ("train", train.train), ("evaluate", train.evaluate), ("palette", palette.palette),
    ("stylize", palette.stylize), ("segment", palette.segment), ("features", features.features),
    ("self-condition", features.self_condition), ("explore", explore.explore),
)
# (name, help, its commands)
GROUPS = (
    ("corpus", "Look at corpora in the store.", (("info", corpus.corpus_info), ("list", corpus.corpus_list))),
    ("lineage", "Query the lineage store.",
     (("show", lineage.lineage_show), ("export", lineage.lineage_export), ("list", lineage.lineage_list))),
    ("datasets", "Published (generated) datasets: list, show, export.",
     (("list", datasets.datasets_list), ("show", datasets.datasets_show), ("export", datasets.datasets_export))),
    ("server", "Keep a Prefect server and a Dask cluster warm between commands.",
     (("start", server.server_start), ("stop", server.server_stop), ("status", server.server_status))),
    ("store", "Check the store's files: `cci store verify`.", (("verify", store.store_verify),)),
)


def register(app: typer.Typer) -> typer.Typer:
    """Add every command and command group of `cci` to APP; returns APP."""
    for name, command in COMMANDS:
        app.command(name)(command)
    for name, help_text, commands in GROUPS:
        group = typer.Typer(help=help_text, no_args_is_help=True)
        for sub, command in commands:
            group.command(sub)(command)
        app.add_typer(group, name=name)
    return app


app = register(typer.Typer(help="CCI: cluster image corpora, learn the clusters, generate new images - "
                                "on Prefect + Dask, with lineage for every artifact.",
                           no_args_is_help=True, pretty_exceptions_enable=False))


def main() -> None:  # pragma: no cover - console entry
    app()
