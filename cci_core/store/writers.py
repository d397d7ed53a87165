"""Who is writing: a process's identity (host, pid, start time) and whether it still runs.

Staging folders, run records and lock objects name their writer with :func:`process_identity`;
the next writer asks :func:`writer_alive` before it removes or takes over what that writer left.
"""
from __future__ import annotations

import os
import socket
import time
from datetime import datetime, timezone


def utc_now() -> str:
    """The current UTC time as ISO 8601 to the second: the timestamp of every JSON record."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists on this host (any owner)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_identity(pid: int | None = None) -> dict:
    """Who is writing: host, pid and the process's start time (a reused pid has another)."""
    import psutil
    pid = os.getpid() if pid is None else pid
    return {"host": socket.gethostname(), "pid": pid, "started": psutil.Process(pid).create_time(),
            "since": utc_now()}


def writer_alive(owner: dict | None, max_age_s: float | None = None) -> bool:
    """True while the process named by ``owner`` (:func:`process_identity`) still runs.

    On this host that is checked directly (pid alive with the same start time). A writer on
    another host is taken as alive until ``max_age_s`` (default ``$CCI_STAGING_MAX_AGE_S``,
    else two days) has passed since it started.
    """
    import psutil
    if not owner or "pid" not in owner:
        return False
    if owner.get("host") != socket.gethostname():
        limit = max_age_s if max_age_s is not None else float(os.environ.get("CCI_STAGING_MAX_AGE_S", 172800))
        return time.time() - float(owner.get("started", 0)) < limit
    try:
        proc = psutil.Process(int(owner["pid"]))
        return abs(proc.create_time() - float(owner.get("started", 0))) < 1.0 and \
            proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False
