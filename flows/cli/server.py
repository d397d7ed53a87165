"""`cci server start|stop|status`: a warm Prefect server and Dask cluster (see :mod:`flows.server`)."""
from __future__ import annotations

import json
from typing import Optional

import typer

from flows.cli.common import err, out, run_guarded
from flows.cli.options import JsonOpt, StoreOpt, WorkersOpt


def server_start(store: Optional[str] = StoreOpt, workers: Optional[int] = WorkersOpt, as_json: bool = JsonOpt):
    """Start a Prefect server and a Dask LocalCluster on 127.0.0.1 in the background and record them in
    <store>/.cci-server.json; later commands on this store use them when neither PREFECT_API_URL nor
    --dask-address is given.

    Example: cci server start --store ./cci-store --workers 2
    """
    from cci_core.store.store import Store
    from flows import server
    from flows.runtime import default_workers
    root = Store(store).root
    err.print("Starting a Prefect server and a Dask cluster on 127.0.0.1 ...", highlight=False)
    state = run_guarded(server.start, root, workers or default_workers())
    import time

    import psutil
    # since the command started (its imports included), not since the servers were spawned
    state["command_seconds"] = round(time.time() - psutil.Process().create_time(), 2)
    if as_json:
        print(json.dumps(state, indent=2))
        return
    out.print(f"Warm server for {root} ready in {state['command_seconds']:.0f} s\n"
              f"  Prefect API: {state['api_url']}   UI: {state['ui_url']}\n"
              f"  Dask scheduler: {state['dask_address']} ({state['workers']} workers)\n"
              f"  log: {state['log']}\n"
              f"  later commands on this store use both; to watch them in the UI from elsewhere: "
              f"export PREFECT_API_URL={state['api_url']}\n"
              f"  (a `prefect server start` of your own on another port needs PREFECT_API_URL exported "
              f"first, or its UI calls port 4200)\n"
              f"  next: cci cluster CORPUS --k 10   |   cci server stop", highlight=False, soft_wrap=True, markup=False)


def server_stop(store: Optional[str] = StoreOpt):
    """Stop the warm Prefect server and Dask cluster of this store.

    Example: cci server stop --store ./cci-store
    """
    from cci_core.store.store import Store
    from flows import server
    root = Store(store).root
    state = server.stop(root)
    out.print(f"Stopped the warm server of {root} (Prefect {state['api_url']}, Dask {state['dask_address']})"
              if state else f"No warm server recorded for {root}: nothing to stop", highlight=False, markup=False)


def server_status(store: Optional[str] = StoreOpt, as_json: bool = JsonOpt):
    """Whether this store has a warm server, and whether its Prefect API and Dask scheduler answer.

    Example: cci server status
    """
    from cci_core.store.store import Store
    from flows import server
    root = Store(store).root
    state = server.status(root)
    if as_json:
        print(json.dumps(state, indent=2))
        return
    if state is None:
        out.print(f"No warm server for {root} (`cci server start` starts one)", highlight=False, markup=False)
        raise typer.Exit(3)
    out.print(f"Warm server for {root} since {state['started_at']}\n"
              f"  Prefect API: {state['api_url']} ({'answers' if state['api_ok'] else 'NOT answering'})\n"
              f"  Dask scheduler: {state['dask_address']} ({'answers' if state['dask_ok'] else 'NOT answering'})",
              highlight=False, markup=False)
