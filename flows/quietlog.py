"""Expected errors print one line on the terminal, not Prefect's logged traceback.

A flow or task that fails on bad input (``ValueError``, ``LookupError``, ...) is logged by
Prefect with its whole traceback (70-110 lines) before the CLI prints its one ``error:`` line.
:func:`install` makes Prefect's *console* handler leave the traceback out for those error
classes only; the API handler (the Prefect UI's logs) still records it, and any other
exception still prints in full. The CLI installs it in its own process and, as a Dask worker
preload (``dask_setup``), in the LocalCluster workers that run the tasks.
"""
from __future__ import annotations

import logging

# the error classes the CLI reports as one line (the project's own errors derive from them:
# UnknownCorpusError, UnknownArtifactError, SourceError, PreflightError, ...)
EXPECTED = (ValueError, LookupError, FileNotFoundError)


def _is_expected(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, EXPECTED):
        return True
    # a full disk, a read-only store, an object store gone: the CLI says it in one line too
    from cci_core.store.machine_faults import is_machine_fault
    return is_machine_fault(exc)


def install() -> None:
    """Patch Prefect's console handler class (idempotent): handlers created later are covered too."""
    from prefect.logging.handlers import PrefectConsoleHandler
    if getattr(PrefectConsoleHandler.format, "_cci_quiet", False):
        return
    original = PrefectConsoleHandler.format

    def format(self, record: logging.LogRecord) -> str:
        if not _is_expected(record):
            return original(self, record)
        saved = record.exc_info, record.exc_text
        record.exc_info = record.exc_text = None  # for this handler only: restored below
        try:
            return original(self, record)
        finally:
            record.exc_info, record.exc_text = saved

    format._cci_quiet = True
    PrefectConsoleHandler.format = format


def _expected_names() -> set[str]:
    names, todo = set(), list(EXPECTED)
    while todo:
        cls = todo.pop()
        if cls.__name__ not in names:
            names.add(cls.__name__)
            todo.extend(cls.__subclasses__())
    return names


def _quiet_compute_failed(record: logging.LogRecord) -> bool:
    """A Dask worker logs a graph task's failure as "Compute Failed" with the traceback's text
    (the exception only as its repr): leave those out for the expected error classes, whose
    one line the CLI prints when the error reaches it."""
    if not str(record.msg).startswith("Compute Failed") or not isinstance(record.args, tuple) or len(record.args) < 4:
        return True
    from cci_core.store.machine_faults import fault_in_text
    text = str(record.args[3])
    return text.partition("(")[0] not in _expected_names() and not fault_in_text(text)


def dask_setup(worker=None) -> None:
    """Dask preload hook: run in each worker process at start."""
    levels = {name: logging.getLogger(name).level for name in ("distributed", "dask")}
    install()  # importing Prefect configures logging: keep the worker's own (quiet) levels
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    worker_log = logging.getLogger("distributed.worker")
    if _quiet_compute_failed not in worker_log.filters:
        worker_log.addFilter(_quiet_compute_failed)
