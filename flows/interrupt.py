"""A killed command takes its work on a warm or external Dask cluster with it.

Killed by SIGINT (Ctrl-C) or SIGTERM, a command used to leave its tasks running on the
cluster's workers: a ``cci refine`` training task went on writing rounds into its run folder for
up to 75 s, while the next command could already be writing the same run. Here:

- :func:`terminate_as_interrupt` makes SIGTERM unwind the command like Ctrl-C (Python's default
  for SIGTERM ends the process at once, without running any cleanup), and either one ends it in one
  line (``interrupted: <stage>; ...``, exit 130 or 143: :func:`flows.cli.common.run_flow`);
- :class:`CancellingDaskTaskRunner` cancels every future its flow submitted when the flow ends
  by an exception, before its client closes;
- a task already running stops at its next progress report (:mod:`tasks.cancel`): Dask cannot
  stop a running thread, it only marks the task cancelled.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator

from prefect_dask import DaskTaskRunner


class CancellingDaskTaskRunner(DaskTaskRunner):
    """A Prefect Dask task runner that cancels the futures it submitted when its flow fails or is
    interrupted (not when it ends normally: then every future has been waited for)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._submitted: list = []

    def submit(self, task, parameters, wait_for=None, dependencies=None):
        future = super().submit(task, parameters, wait_for=wait_for, dependencies=dependencies)
        self._submitted.append(future.wrapped_future)
        return future

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.cancel_submitted()
        super().__exit__(exc_type, exc, tb)

    def cancel_submitted(self, wait_s: float = 20.0) -> None:
        """Cancel the futures not finished yet and wait up to ``wait_s`` for the workers' task threads
        to stop (a running task stops at its next progress report, :mod:`tasks.cancel`), so the
        cluster then closes its workers cleanly (best effort: the scheduler may already be gone)."""
        pending = [f for f in self._submitted if not f.done()]
        self._submitted = []
        if not pending or self._client is None:
            return
        with contextlib.suppress(Exception):
            self._client.cancel(pending, reason="the cci command that submitted it ended")
            end = time.monotonic() + wait_s
            while time.monotonic() < end and any(self._client.run(_running_threads).values()):
                time.sleep(0.5)


def _running_threads(dask_worker) -> int:
    return len(dask_worker.active_threads)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Inside the block (main thread only), SIGTERM raises KeyboardInterrupt as Ctrl-C does, so
    context managers and ``finally`` blocks run; the previous handlers come back afterwards.

    A signal repeated within :data:`REPEAT_S` is ignored, here and in the SIGTERM handler Prefect's
    flow engine installs while a flow runs: ``timeout`` sends SIGTERM twice (to the command, then to
    its process group), and the second one, raised while the first unwound a lock wait, failed the
    flow with "release unlocked lock" and a traceback.

    The command then ends with one line of its own (:func:`exit_code` tells 130 from 143;
    :func:`quiet_cancellations` keeps Prefect's "Crash detected!" off the terminal)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        INTERRUPTED.set()
        raise KeyboardInterrupt(f"signal {signum}")

    from prefect.utilities import engine
    bridge = engine._prefect_sigterm_handler  # looked up by name each time a flow run installs it
    engine._prefect_sigterm_handler = _once(bridge)
    previous = {sig: signal.signal(sig, _once(interrupt)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        engine._prefect_sigterm_handler = bridge


REPEAT_S = 1.0
# set once the command is interrupted: the stages that then end crashed or cancelled are not news
# (flows/cli/output.py), the command's one "interrupted: …" line says it
INTERRUPTED = threading.Event()


def _once(handler):
    """HANDLER, ignoring a signal that repeats the one it handled less than :data:`REPEAT_S` ago
    (a person pressing Ctrl-C again later still gets through)."""
    last: dict[int, float] = {}

    def handle(signum, frame):
        now = time.monotonic()
        if now - last.get(signum, -REPEAT_S) < REPEAT_S:
            return
        last[signum] = now
        handler(signum, frame)
    return handle


def exit_code(exc: KeyboardInterrupt) -> int:
    """The shell's code for a command ended by this interrupt: 143 for SIGTERM, 130 for Ctrl-C (SIGINT)."""
    return 128 + (signal.SIGTERM if str(exc) == f"signal {signal.SIGTERM}" else signal.SIGINT)


def dask_setup(worker=None) -> None:
    """Dask worker preload (this module): a worker process leaves Ctrl-C and SIGTERM to the command that
    started it, which cancels its tasks and closes the cluster (its nanny stops the worker, with SIGKILL
    if it must); killed by a signal to the whole process group (a terminal's Ctrl-C, ``timeout``)
    with the command, workers printed cancellation warnings and left semaphores behind."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
    # a task stopped because its command ended is not news on that command's terminal (the
    # Prefect UI still records it: only the console handlers are filtered)
    for handler in logging.getLogger("distributed").handlers:
        handler.addFilter(_not_a_cancellation)
    quiet_cancellations()


def quiet_cancellations() -> None:
    """Prefect's console handlers (made on first use, so their class is patched) leave out what a
    cancelled or interrupted run logs; its API handler (the UI) keeps it."""
    from prefect.logging.handlers import PrefectConsoleHandler
    if not getattr(PrefectConsoleHandler.emit, "_cci_cancellation", False):
        emit = PrefectConsoleHandler.emit

        def quiet_emit(self, record: logging.LogRecord) -> None:
            if _not_a_cancellation(record):
                emit(self, record)
        quiet_emit._cci_cancellation = True
        PrefectConsoleHandler.emit = quiet_emit


def _not_a_cancellation(record: logging.LogRecord) -> bool:
    text = record.getMessage()
    return not any(part in text for part in ("TaskCancelled", "ended with CancelledError",
                                             "Execution was aborted by"))
