"""Heartbeats of CCI flow runs, so a run whose process is gone ends as Crashed.

Prefect 3.9 emits a ``prefect.flow-run.heartbeat`` event from every running flow run every
``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (default 180, minimum 30). The automation made
by :mod:`deployments.automations` marks a run tagged ``cci`` Crashed when no heartbeat and
no final state followed its last heartbeat within :data:`CRASH_AFTER_S`. The CLI (and the
deployments' job environment) therefore beat every :data:`HEARTBEAT_S` seconds: two missed
beats in a row before a live run could be taken for dead.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

HEARTBEAT_S = 30
CRASH_AFTER_S = 90
ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"


def heartbeat_env() -> dict[str, str]:
    """The environment a worker's flow-run process needs (for a deployment's ``job_variables``)."""
    return {ENV: str(HEARTBEAT_S)}


@contextlib.contextmanager
def heartbeats() -> Iterator[int]:
    """Flow runs started in this block beat every :data:`HEARTBEAT_S` s, unless the
    environment sets ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` (kept when it is faster)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    current = PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value()
    seconds = min(current, HEARTBEAT_S) if (ENV in os.environ and current) else HEARTBEAT_S
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: seconds}):
        yield seconds
