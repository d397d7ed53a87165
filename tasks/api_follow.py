"""Prefect's long-lived services in a Dask worker follow the API of the task run at hand.

A Dask worker outlives the command that submitted work to it (``--dask-address``, a warm
cluster), and the next command may report to another Prefect API (each command without
``PREFECT_API_URL`` starts a temporary server of its own). Prefect keeps some services once per
process, each with a client made for the API current when it was first used: the
concurrency-slot services (one per set of tag names: every task run with tags asks them for
``tag:`` slots) and the events worker (task-run state events). Reused by a later task run of
another API, they call a server that is gone: every task with the same tags then fails with
``ConcurrencySlotAcquisitionError`` after minutes of retries, and state events are lost.

:func:`install` wraps those services' ``instance()`` so that each API (``PREFECT_API_URL`` of the
task run: Prefect's Dask task runner carries the flow run's settings with every task) gets its
own instance; the services of APIs not used for a while are drained. Prefect's log worker is
already kept per API URL. It is installed when :mod:`tasks` is imported, which every worker does
when it unpickles a CCI task, before Prefect's task engine asks for a slot: the one hook that also
reaches a worker started by hand (``dask worker``), where a preload set by the command does not.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

KEEP_APIS = 4  # the services of this many most recently used APIs stay; older ones are drained
_lock = threading.RLock()
_services: dict[tuple, object] = {}  # (class, args, api url) -> service
_apis: OrderedDict[str | None, None] = OrderedDict()  # API URLs, least recently used first


def _service_classes() -> list[type]:
    """Prefect's per-process services that hold a client for one API (those this Prefect has)."""
    import importlib

    from prefect._internal.concurrency.services import _QueueServiceBase
    found = []
    for module, name in (("prefect.concurrency.services", "ConcurrencySlotAcquisitionService"),
                         ("prefect.concurrency.services", "ConcurrencySlotAcquisitionWithLeaseService"),
                         ("prefect.concurrency.v1.services", "ConcurrencySlotAcquisitionService"),
                         ("prefect.events.worker", "EventsWorker")):
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if issubclass(cls, _QueueServiceBase):  # instance(), _stopped, _remove_instance(), _drain()
            found.append(cls)
    return found


def current_api() -> str | None:
    """The Prefect API URL the running code reports to (the task run's settings, else the process's)."""
    from prefect.settings import PREFECT_API_URL
    return PREFECT_API_URL.value()


def _drain_old_apis() -> None:
    """Drain the services of APIs beyond the :data:`KEEP_APIS` most recently used (not waited for)."""
    while len(_apis) > KEEP_APIS:
        old, _ = _apis.popitem(last=False)
        for key in [k for k in _services if k[3] == old]:
            service = _services.pop(key)
            if not getattr(service, "_stopped", True):
                service._drain()


def _follow(cls: type) -> None:
    original = cls.instance  # bound to cls (Prefect's classmethod, or the class's own override)

    def instance(*args, **kwargs):
        url = current_api()
        key = (cls, args, tuple(sorted(kwargs.items())), url)
        with _lock:
            _apis.pop(url, None)
            _apis[url] = None
            service = _services.get(key)
            if service is None or service._stopped:
                service = original(*args, **kwargs)
                if getattr(service, "_cci_api", url) != url:  # Prefect's cache holds another API's
                    service._remove_instance()  # left running for that API's task runs, not reused here
                    service = original(*args, **kwargs)
                service._cci_api = url
                _services[key] = service
            _drain_old_apis()
            return service

    instance._cci_follows_api = True
    cls.instance = instance


def install() -> None:
    """Make Prefect's per-process API services one per API URL (idempotent)."""
    with _lock:
        for cls in _service_classes():
            if not getattr(cls.__dict__.get("instance"), "_cci_follows_api", False):
                _follow(cls)
