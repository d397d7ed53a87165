"""Register the CCI deployments with a Prefect server, on a process work pool.

    prefect server start --host 127.0.0.1                      # terminal 1 (UI at http://127.0.0.1:4200)
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    prefect work-pool create cci-process --type process        # once
    python -m deployments.deploy --source builtin:digits --corpus digits28   # --param k=4 ... to override
    prefect worker start --pool cci-process                    # terminal 2: runs what is scheduled
    prefect deployment run cci-pipeline/cci-pipeline           # or from the UI

Deployments:
  cci-pipeline  on demand: ingest -> cluster -> refine -> train -> evaluate -> generate
  cci-refresh   on a cron schedule (default 03:00 daily): ingest what is new, assign it with the
                classifier, measure drift, retrain only the clusters that changed, publish a new
                dataset version; does nothing (and says so) when nothing is new

Dead runs end: ``deploy()`` also creates the automation of :mod:`deployments.automations`, which
marks a run tagged ``cci`` Crashed 90 s after its last heartbeat (the runs beat every 30 s).

GPU work: training tasks are tagged ``gpu``; ``prefect concurrency-limit create gpu <number of GPUs>``
holds them to the GPUs there are. To train on Dask GPU workers, start
``dask worker tcp://SCHEDULER:8786 --resources GPU=1`` on each GPU machine and pass the scheduler as the
``dask_address`` parameter: the tasks then ask for one GPU each.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def deploy(pool: str = "cci-process", source: str = "builtin:digits", corpus: str = "digits28",
           store_root: str | None = None, refresh_cron: str = "0 3 * * *", pipeline_params: dict | None = None,
           refresh_params: dict | None = None, job_variables: dict | None = None,
           refresh_paused: bool = False) -> list:
    """Create or update the two deployments; returns their ids.

    ``pipeline_params`` / ``refresh_params`` override the flows' own defaults (any parameter of
    ``pipeline_flow`` / ``refresh_flow``, e.g. ``{"k": 4, "train_steps": 10}``); ``job_variables``
    go to the work pool's job (for a process pool e.g. ``{"env": {"OMP_NUM_THREADS": "1"}}``);
    ``refresh_paused`` registers the refresh with its schedule paused. The flow runs beat every
    30 s and the server gets the automation that marks a run Crashed when its beats stop
    (:mod:`deployments.automations`).
    """
    from prefect import flow

    from deployments.automations import ensure_crash_automation
    from flows.liveness import heartbeat_env
    job_variables = dict(job_variables or {})
    job_variables["env"] = {**heartbeat_env(), **(job_variables.get("env") or {})}
    from cci_core.store import fs
    # a path becomes absolute (the worker runs elsewhere); a URL (s3://bucket/prefix) is kept as it is
    store_root = store_root if fs.is_url(store_root or "") else str(Path(store_root or ROOT / "cci-store").resolve())
    common = {"source": source, "corpus": corpus, "store_root": store_root}
    ids = []
    pipeline = flow.from_source(source=str(ROOT), entrypoint="flows/pipeline.py:pipeline_flow")
    ids.append(pipeline.deploy(name="cci-pipeline", work_pool_name=pool, parameters={**common, **(pipeline_params or {})},
                               description="The whole CCI pipeline on one corpus, on demand.",
                               job_variables=job_variables, tags=["cci", "stage:pipeline", f"corpus:{corpus}"],
                               print_next_steps=False))
    refresh = flow.from_source(source=str(ROOT), entrypoint="flows/refresh.py:refresh_flow")
    ids.append(refresh.deploy(name="cci-refresh", work_pool_name=pool, cron=refresh_cron, paused=refresh_paused,
                              parameters={**common, **(refresh_params or {})}, job_variables=job_variables,
                              description="Scheduled corpus refresh: ingest, assign, drift, retrain what changed, "
                                          "publish.", tags=["cci", "stage:refresh", f"corpus:{corpus}"],
                              print_next_steps=False))
    ensure_crash_automation()
    return ids


def _params(pairs: list[str]) -> dict:
    """KEY=VALUE pairs; VALUE is read as JSON when it parses (numbers, lists, objects), else as text."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--param/--refresh-param takes KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", default="cci-process")
    ap.add_argument("--source", default="builtin:digits", help="what the pipeline and the refresh ingest")
    ap.add_argument("--corpus", default="digits28")
    ap.add_argument("--store", default=None, help="artifact store root: a folder (default ./cci-store of the checkout) or a URL "
                         "(s3://bucket/prefix)")
    ap.add_argument("--refresh-cron", default="0 3 * * *")
    ap.add_argument("--refresh-paused", action="store_true", help="register the refresh schedule paused")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="a cci-pipeline parameter (VALUE as JSON when it parses), e.g. --param k=4; repeatable")
    ap.add_argument("--refresh-param", action="append", default=[], metavar="KEY=VALUE",
                    help="a cci-refresh parameter, e.g. --refresh-param retrain_threshold=0.2; repeatable")
    args = ap.parse_args()
    for i in deploy(args.pool, args.source, args.corpus, args.store, args.refresh_cron,
                    pipeline_params=_params(args.param), refresh_params=_params(args.refresh_param),
                    refresh_paused=args.refresh_paused):
        print(f"deployment {i}")


if __name__ == "__main__":
    main()
