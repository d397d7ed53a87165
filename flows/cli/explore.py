"""`cci explore RUN`: (re)build a run's cluster explorer page, ``reports/explore.html``
(:mod:`cci_core.cluster.explore`), straight from the run's files: no Prefect server, no Dask cluster."""
from __future__ import annotations

from typing import Optional

import typer

from flows.cli.common import lit, out, print_json, read_store, run_guarded
from flows.cli.options import JsonOpt, StoreOpt


def explore(run_id: str = typer.Argument(..., metavar="RUN", help="A clustering or refined run id."),
            max_points: int = typer.Option(5000, "--max-points", min=1,
                                           help="Points drawn on the map: a seeded sample, stratified by cluster."),
            fiftyone: Optional[str] = typer.Option(None, "--fiftyone", metavar="DIR",
                                                   help="Instead of the page, write RUN as a folder FiftyOne "
                                                        "imports (DIR/fiftyone_import.py loads it)."),
            store: Optional[str] = StoreOpt, as_json: bool = JsonOpt):
    """Write RUN's cluster explorer: one HTML page that opens from disk with no server and no network.

    A map of the run's embedding coloured by cluster (hover a point to see its image, click a cluster
    in the legend to filter), each cluster's size, centre images, most doubted members and label mix,
    and the cluster x label table when the corpus has labels. `cci cluster` and `cci refine` write it too;
    `cci train` and `cci evaluate` add each cluster's real vs generated images, FD and coverage.
    With --fiftyone DIR: every row's image, cluster, confidence and embedding, for FiftyOne's App and
    its embeddings panel (docs/datasets.md).

    Example: cci explore RUN --max-points 2000
    """
    s = read_store(store)
    if fiftyone is not None:
        from cci_core.cluster.run_fiftyone import export_run_fiftyone
        path = run_guarded(export_run_fiftyone, s, run_id, fiftyone)
        if as_json:
            print_json({"run_id": run_id, "fiftyone": str(path)})
        else:
            out.print(f"FiftyOne folder of run [bold]{lit(run_id)}[/]: {lit(path)}  (load it: python "
                      f"{lit(path / 'fiftyone_import.py')})", highlight=False, soft_wrap=True)
        return
    from cci_core.generate.explore_generated import explore_with_generators
    path = run_guarded(explore_with_generators, s, run_id, max_points)
    if as_json:
        print_json({"run_id": run_id, "explore": str(path)})
    else:
        out.print(f"Explorer of run [bold]{lit(run_id)}[/]: {lit(path)}", highlight=False, soft_wrap=True)
