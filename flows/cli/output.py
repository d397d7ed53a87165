"""What a `cci` command shows on the terminal while its flow runs: one line (or a live progress
bar) per stage, and Prefect's own log lines only with ``--verbose``.

A *stage* is a flow run: the command's flow and, for ``cci run`` / ``cci refresh``, each of its
subflows. :class:`StageProgress` learns the top flow run's id from Prefect's own "Beginning flow
run" log record (the flow runs in this process) and then polls the Prefect API once a second
for the run's subflows, their task runs and their progress artifacts (the ones the tasks update
while they work, on whichever Dask worker). On a terminal each stage is a rich progress bar
(tasks done, tasks/s, time left, the progress artifact's note); anywhere else each stage is one
line when it ends, and a stage still running says where it is every 30 s (``HEARTBEAT_S``).

Verbosity is chosen on the command line (``--quiet`` / ``--verbose``, :mod:`flows.cli.options`) and
applied by :func:`configure_logging` before Prefect is imported: Prefect's console handler is
raised to WARNING (its API handler, the UI's logs, keeps everything), in this process and, by
the environment, in the Dask worker processes the command starts.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time

QUIET, NORMAL, VERBOSE = "quiet", "normal", "verbose"
_mode = {"value": NORMAL}
_CONSOLE_LEVEL = "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"
POLL_S = 2.0  # seconds between two looks at the API (5 requests each: the Prefect server shares the cores)
# off a terminal, a running stage says where it is this often (CI logs, cron, `make run > log`)
HEARTBEAT_S = float(os.environ.get("CCI_HEARTBEAT_S", "30"))
NOTE_CHARS = 48


_running = {"stage": None}  # the name of the stage last seen running (what an interrupt stopped)


def running_stage() -> str | None:
    """The stage (flow run name) last seen running, or None."""
    return _running["stage"]


def clip(note: str, width: int = NOTE_CHARS) -> str:
    """``note`` cut to ``width`` characters at a word boundary (never mid-name), marked with an ellipsis."""
    if len(note) <= width:
        return note
    cut = max(note.rfind(sep, 0, width) for sep in (" ", ","))
    return note[:cut if cut > 0 else width - 1].rstrip(" ,") + "…"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def mode() -> str:
    """The verbosity the command line asked for: quiet, normal or verbose."""
    return _mode["value"]


def set_mode(value: str) -> None:
    """Switch to VALUE (quiet, normal or verbose) and apply it to Prefect's logging."""
    _mode["value"] = value
    configure_logging()


def configure_logging() -> None:
    """Prefect's console output for the chosen verbosity, here and in Dask workers started later.

    The environment variable is read by Prefect's logging config when Prefect is imported (in
    this process and in each LocalCluster worker); handlers that already exist are set too.
    """
    if mode() == VERBOSE:
        os.environ.pop(_CONSOLE_LEVEL, None)
    else:
        os.environ[_CONSOLE_LEVEL] = "WARNING"
        # a LocalCluster's teardown warns about slow workers it then kills: nothing lost, nothing to do
        logging.getLogger("distributed.nanny").setLevel(logging.ERROR)
    import sys
    if "prefect.logging.handlers" in sys.modules:
        from prefect.logging.handlers import PrefectConsoleHandler
        for name in ("", "uvicorn", "fastapi"):
            for handler in logging.getLogger(name).handlers:
                if isinstance(handler, PrefectConsoleHandler):
                    handler.setLevel(logging.NOTSET if mode() == VERBOSE else logging.WARNING)


def say(console, message: str) -> None:
    """A status line on ``console`` (stderr), unless ``--quiet``."""
    if mode() != QUIET:
        console.print(message, highlight=False, soft_wrap=True, markup=False)


_BEGIN = re.compile(r"Beginning flow run '(?P<name>.*)' for flow '(?P<flow>[^']*)'")


class _TopRun(logging.Handler):
    """Catches the top flow run's id from Prefect's "Beginning flow run" record (this process)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.flow_run_id: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.flow_run_id is None and _BEGIN.match(str(record.msg)):
            self.flow_run_id = getattr(record, "flow_run_id", None)


def _interrupted() -> bool:
    from flows.interrupt import INTERRUPTED
    return INTERRUPTED.is_set()


class StageProgress:
    """Terminal progress of the flow run started inside the ``with`` block (see the module doc).

    Parameters
    ----------
    console : rich.console.Console
        Where the stage lines or bars go (the CLI's stderr console).
    api_url : str
        The Prefect API the flow reports to.
    ui_url : str, optional
        Its UI, when the command started it (a temporary server): the flow run's page there is
        printed once the run exists.
    """

    def __init__(self, console, api_url: str, ui_url: str | None = None):
        self.console = console
        self.api_url = api_url.rstrip("/")
        self.ui_url = ui_url
        self.top = _TopRun()
        self.stages: dict[str, dict] = {}  # flow run id -> what was shown of it
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._bars = None
        self._http = None

    # -- the block ---------------------------------------------------------------------------
    def __enter__(self) -> StageProgress:
        if mode() == QUIET:
            return self
        import httpx
        self._http = httpx.Client(timeout=5.0)
        logging.getLogger("prefect.flow_runs").addHandler(self.top)
        if self.console.is_interactive and mode() != VERBOSE:
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
            self._bars = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24), TaskProgressColumn(),
                                  TextColumn("{task.fields[tasks]}"), TextColumn("{task.fields[rate]}"),
                                  TimeRemainingColumn(), TextColumn("[dim]{task.fields[note]}"),
                                  console=self.console, transient=False, refresh_per_second=4)
            self._bars.start()
        self._thread = threading.Thread(target=self._loop, name="cci-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if mode() == QUIET:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            if exc[0] is not KeyboardInterrupt:  # interrupted, the command says so in one line of its own
                self.poll()  # the final states, before the command prints its summary
        except Exception:  # noqa: BLE001 - progress display must never fail a command
            pass
        if self._bars is not None:
            self._bars.stop()
        logging.getLogger("prefect.flow_runs").removeHandler(self.top)
        self._http.close()

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - an API hiccup only delays the display
                continue

    # -- the API ------------------------------------------------------------------------------
    def _post(self, path: str, body: dict):
        response = self._http.post(f"{self.api_url}/{path}", json=body)
        response.raise_for_status()
        return response.json()

    def _runs(self) -> list[dict]:
        top = self.top.flow_run_id
        if not top:
            return []
        runs = self._post("flow_runs/filter", {"flow_runs": {"id": {"any_": [top]}}})
        runs += self._post("flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [top]}}})
        # subflows first: the top run ends after them, and its line comes last
        return sorted(runs, key=lambda r: (r["id"] == top, r.get("start_time") or r.get("created") or ""))

    def _tasks(self, run_id: str) -> tuple[int, int]:
        flows = {"id": {"any_": [run_id]}}
        total = self._post("task_runs/count", {"flow_runs": flows})
        done = self._post("task_runs/count", {"flow_runs": flows,
                                              "task_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}})
        return int(done), int(total)

    def _progress(self, run_id: str) -> tuple[float | None, str]:
        arts = self._post("artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]},
                                                             "type": {"any_": ["progress"]}}})
        if not arts:
            return None, ""
        latest = max(arts, key=lambda a: a.get("updated") or "")
        return sum(float(a["data"]) for a in arts) / len(arts), latest.get("description") or ""

    def poll(self) -> None:
        """Read the stages from the API once and show what changed."""
        with self._lock:
            if self.ui_url and self.top.flow_run_id:
                self.console.print(f"Its flow run: {self.ui_url}/runs/flow-run/{self.top.flow_run_id}",
                                   highlight=False, soft_wrap=True, markup=False)
                self.ui_url = None  # said once
            for run in self._runs():
                self._show(run)

    # -- the terminal --------------------------------------------------------------------------
    def _show(self, run: dict) -> None:
        from rich.markup import escape
        name = escape(run["name"])
        shown = self.stages.setdefault(run["id"], {"line": False, "bar": None, "t0": time.monotonic()})
        if shown["line"]:
            return
        state = (run.get("state_type") or "PENDING").upper()
        final = state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
        done, total = self._tasks(run["id"])
        pct, note = self._progress(run["id"])
        counts = f"{done}/{total} tasks"
        if pct is None:
            pct = 100.0 * done / total if total else 0.0
        else:
            counts = ""  # the percent is the stage's own progress report, not the task count
        if final and state == "COMPLETED":
            pct = 100.0
        elapsed = run.get("total_run_time") or (time.monotonic() - shown["t0"])
        rate = f"{done / elapsed:.1f} tasks/s" if elapsed and done else ""
        if final and state != "COMPLETED" and _interrupted():
            shown["line"] = True  # crashed because the command was interrupted: its own one line says so
            return
        if self._bars is not None:
            fields = dict(tasks=counts, rate=rate, note=escape(clip(note)))
            if shown["bar"] is None:
                shown["bar"] = self._bars.add_task(name, total=100.0, **fields)
            self._bars.update(shown["bar"], completed=pct, **fields)
            if final:
                mark = "[green]✓[/]" if state == "COMPLETED" else f"[red]✗ {state.lower()}[/]"
                self._bars.update(shown["bar"], description=f"{mark} {name}")
                self._bars.stop_task(shown["bar"])
                shown["line"] = True
            return
        if not final:
            _running["stage"] = run["name"]
        now = time.monotonic()
        if not final and now - shown.setdefault("said", shown["t0"]) >= HEARTBEAT_S:
            shown["said"] = now
            left = f", ~{_duration(elapsed * (100 - pct) / pct)} left" if 0 < pct < 100 else ""
            self.console.print(f"… {run['name']}  {pct:.0f}% after {_duration(elapsed)}{left}"
                               + (f": {clip(note, 80)}" if note else f", {counts}"),
                               highlight=False, soft_wrap=True, markup=False)
        if final:
            mark = "✓" if state == "COMPLETED" else f"✗ {state.lower()}:"
            self.console.print(f"{mark} {run['name']}  {elapsed:.1f} s, {done}/{total} tasks", highlight=False,
                               soft_wrap=True, markup=False)
            shown["line"] = True
