"""A killed command takes its work on a warm or external Dask cluster with it.

Killed by SIGINT (Ctrl-C) or SIGTERM, a command used to leave its tasks running on the
cluster's workers: a ``cci refine`` training task went on writing rounds into its run folder for
up to 75 s, while the next command could already be writing the same run. Here:

- :func:`terminate_as_interrupt` makes SIGTERM unwind the command like Ctrl-C (Python's default
  for SIGTERM ends the process at once, without running any cleanup);
- :class:`CancellingDaskTaskRunner` cancels every future its flow submitted when the flow ends
  by an exception, before its client closes;
- a task already running stops at its next progress report (:mod:`tasks.cancel`): Dask cannot
  stop a running thread, it only marks the task cancelled.
"""
from __future__ import annotations

import contextlib
import signal
import threading
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

    def cancel_submitted(self) -> None:
        """Cancel the futures not finished yet (best effort: the scheduler may already be gone)."""
        pending = [f for f in self._submitted if not f.done()]
        self._submitted = []
        if pending and self._client is not None:
            with contextlib.suppress(Exception):
                self._client.cancel(pending, reason="the cci command that submitted it ended")


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Inside the block (main thread only), SIGTERM raises KeyboardInterrupt as Ctrl-C does, so
    context managers and ``finally`` blocks run; the previous handler comes back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
