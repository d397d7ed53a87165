"""A task on a Dask worker stops when the command that submitted it is gone.

Dask cannot stop a running task: when its future is cancelled or released (the command was
killed, its client closed or cancelled its futures) the worker only marks the task cancelled and
lets the thread run on, here a training loop writing rounds into its run folder for a minute or
more while the next command may already be writing the same run. :func:`raise_if_cancelled`,
called from the loops' progress callbacks (:func:`tasks.common.progress_artifact`), ends such a
task at its next step.
"""
from __future__ import annotations

# the worker's states of a task whose result nobody wants any more
_UNWANTED = ("cancelled", "released", "forgotten")


class TaskCancelled(BaseException):
    """The Dask future of this task was cancelled or released. A BaseException: ``except Exception``
    in a loop must not swallow it, and Prefect ends the task run as crashed instead of retrying it."""


def unwanted() -> bool:
    """True inside a task on a Dask worker whose result nobody wants any more (False elsewhere)."""
    from distributed import get_worker
    from distributed.worker import thread_state
    key = getattr(thread_state, "key", None)
    if key is None:
        return False
    try:
        worker = get_worker()
    except ValueError:  # not on a Dask worker
        return False
    ts = worker.state.tasks.get(key)
    return ts is None or ts.state in _UNWANTED


def raise_if_cancelled() -> None:
    """Raise :class:`TaskCancelled` when :func:`unwanted`."""
    if unwanted():
        raise TaskCancelled("the command that submitted this task is gone (its Dask future was cancelled "
                            "or released): stopped here")
