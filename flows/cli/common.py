"""What every `cci` command shares: the two consoles, the one-line error, the reading of a store,
running a flow, and the parsers of option values that several commands take."""
from __future__ import annotations

import json
import os
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

out = Console()
err = Console(stderr=True)


def fail(message: str) -> None:
    """MESSAGE as one red ``error:`` line and exit code 1; printed literally (a user's ``[/]`` or
    ``[bold]`` is text, not rich markup)."""
    err.print(Text.assemble(("error:", "bold red"), " ", str(message)), highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def lit(value) -> str:
    """VALUE (a name, path or reason from the user or the store) as rich markup that prints literally."""
    return escape(str(value))


def _expected_errors():
    from flows.quietlog import EXPECTED  # one list: these print one line, here and in Prefect's log
    return EXPECTED


def read_store(store: str | None) -> "Store":  # noqa: F821 - imported where used (pandas: 0.3 s)
    """The existing store a reading command works on; a missing or mistyped one is one red line."""
    from flows.preflight import existing_store
    return run_guarded(existing_store, store)


def run_flow(flow, dask_address: str | None, workers: int | None, *args, **kwargs):
    """Run a Prefect flow against the Prefect API (the store's warm server, else a temporary one
    when none is set) with a Dask task runner (the scheduler at ``dask_address``, the warm one, else
    a LocalCluster of ``workers``), showing one line or progress bar per stage (flows.cli.output);
    expected errors become one red line and exit code 1."""
    import contextlib

    from flows.cli import output
    from flows.server import warm
    output.configure_logging()  # before the LocalCluster's workers inherit the environment
    store_root = kwargs.get("store_root", getattr(args[0], "store_root", None) if args else None)
    from flows.preflight import check_writable_store
    run_guarded(check_writable_store, store_root)  # a read-only or full store, a locked lineage.db: before any start-up
    state = None if dask_address else warm(store_root)
    if state:
        os.environ["PREFECT_API_URL"] = state["api_url"]
        dask_address = state["dask_address"]
        output.say(err, f"Using the warm server of this store: Prefect {state['api_url']}, Dask "
                            f"{dask_address} (`cci server stop` ends them)")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.interrupt import exit_code, quiet_cancellations, terminate_as_interrupt
    from flows.preflight import check_prefect_api
    try:
        with contextlib.ExitStack() as stack:
            # Ctrl-C and SIGTERM unwind (the flow's futures are cancelled, the cluster closed) and end below
            stack.enter_context(terminate_as_interrupt())
            if os.environ.get("PREFECT_API_URL"):  # Prefect may have read its settings before the warm server's URL
                stack.enter_context(temporary_settings({PREFECT_API_URL: os.environ["PREFECT_API_URL"]}))
            run_guarded(check_prefect_api)  # a PREFECT_API_URL nobody answers: one line, not Prefect's retries
            import dask

            from flows import quietlog
            from flows.preflight import check_dask_address
            from flows.runtime import WORKER_CONFIG, dask_task_runner, prefect_api
            if workers is not None and workers < 1:
                fail(f"--workers {workers}: give at least 1 worker process")
            run_guarded(check_dask_address, dask_address)  # seconds, not a server start-up, before a wrong address
            quietlog.install()  # an expected error is one line here, not Prefect's logged traceback
            quiet_cancellations()  # an interrupt too: the one line below
            from flows.liveness import heartbeats
            from flows.naming import tagged
            temporary = not PREFECT_API_URL.value()  # prefect_api starts a server with a UI and prints its address
            api_url = run_guarded(stack.enter_context, prefect_api(announce=lambda msg: output.say(err, msg),
                                                                       store_root=store_root))
            # tagged: the run is named and tagged from its inputs; heartbeats: a killed run ends as Crashed
            stack.enter_context(heartbeats())
            stack.enter_context(tagged(flow, *args, **kwargs))
            stack.enter_context(dask.config.set({"distributed.worker.preload": ["flows.quietlog", "flows.interrupt"],
                                                 **WORKER_CONFIG}))
            stack.enter_context(output.StageProgress(err, api_url, api_url.removesuffix("/api") if temporary else None))
            return run_guarded(flow.with_options(task_runner=dask_task_runner(dask_address, workers)),
                               *args, **kwargs)
    except KeyboardInterrupt as exc:
        stage = output.running_stage() or flow.name.removeprefix("cci-")
        err.print(f"interrupted: {stage}; run the same command again to resume", highlight=False, markup=False,
                  soft_wrap=True)  # one line, whatever the width (a log's console is 80 columns)
        raise SystemExit(exit_code(exc)) from None


def run_guarded(fn, *args, **kwargs):
    """Run a flow or library call; expected errors, and faults of the machine (a full disk, a read-only
    store, an object store that stopped answering, a damaged or locked lineage database: see
    cci_core.store.machine_faults), become one red line and exit code 1."""
    from cci_core.store.machine_faults import fault_context, machine_fault
    try:
        return fn(*args, **kwargs)
    except _expected_errors() as exc:
        fail(str(exc))
    except Exception as exc:
        fault = machine_fault(exc, **fault_context(*args, *kwargs.values()))
        if fault is None:
            raise
        fail(str(fault))


def name_values(items: list[str], flag: str) -> dict[str, str]:
    """``NAME=VALUE`` options (repeatable flags) as a dict; anything else is one red line."""
    out_ = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            fail(f"{flag} {item!r}: write NAME=VALUE, e.g. {flag} trust_quantile=0.7")
        out_[name.strip()] = value.strip()
    return out_


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


def parse_number(text: str, what: str) -> int | float:
    """``--components``: a whole number of components or a variance ratio."""
    try:
        value = float(text)
    except ValueError:
        fail(f"{what} {text!r}: give a whole number of components or a variance ratio in (0, 1)")
    return int(value) if value.is_integer() else value


def parse_version(text: str) -> int | None:
    """``--version`` as every command takes it: ``3``, ``v3`` or ``latest`` (None)."""
    value = str(text).strip().lower()
    if value in ("", "latest"):
        return None
    digits = value.removeprefix("v")
    if not digits.isdigit():
        fail(f"--version {text!r}: give a version number such as 3 or v3, or latest")
    return int(digits)


def parse_k(text: str) -> int | str:
    """``--k``: one number of clusters (an int) or a range to choose from (checked here, kept as text)."""
    from cci_core.cluster.choices import parse_k_range
    try:
        ks = parse_k_range(text)
    except ValueError as exc:
        fail(f"--k {text}: {exc}")
    return ks[0] if text.strip().isdigit() else text.strip()


def print_json(value) -> None:
    """``--json``: VALUE on stdout, indented, anything not JSON (paths, dates) as text."""
    print(json.dumps(value, indent=2, default=str))
