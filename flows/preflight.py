"""Checks the CLI runs before it starts a Prefect server or a Dask cluster.

Each raises :class:`PreflightError` (a ``ValueError``) with one line naming the value at
fault and what to do, so the CLI prints it as ``error: ...`` and exits 1 within a second
instead of after a server start-up and a logged traceback.
"""
from __future__ import annotations

import errno
import socket
from pathlib import Path
from urllib.parse import urlsplit

from cci_core.store import runs
from cci_core.store.store import Store

DASK_CONNECT_TIMEOUT_S = 2.5
# what a store root holds once anything was written to it (docs/architecture.md, "The store layout")
_STORE_MARKERS = ("lineage.db", "corpora", "runs", "datasets", "palettes")


class PreflightError(ValueError):
    """An input that is wrong before anything has started."""


def dask_host_port(address: str) -> tuple[str, int]:
    """``tcp://host:port`` (or ``tls://``, or bare ``host:port``) as ``(host, port)``."""
    text = address.strip()
    parts = urlsplit(text if "://" in text else f"tcp://{text}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("tcp", "tls") or not parts.hostname or port is None:
        raise PreflightError(f"--dask-address {address!r}: give the scheduler as tcp://HOST:PORT "
                             "(e.g. tcp://127.0.0.1:8786), or drop --dask-address for a local cluster")
    return parts.hostname, port


def check_dask_address(address: str | None, timeout: float = DASK_CONNECT_TIMEOUT_S) -> None:
    """Refuse a ``--dask-address`` nothing answers on (a TCP connect, ``timeout`` seconds)."""
    if not address:
        return
    host, port = dask_host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except socket.gaierror:
        why = f"unknown host {host!r}"
    except (TimeoutError, socket.timeout):
        why = f"no answer within {timeout:g} s"
    except OSError as exc:
        why = "connection refused" if exc.errno == errno.ECONNREFUSED else (exc.strerror or str(exc)).lower()
    else:
        if _dask_handshake(address, timeout):
            return
        why = f"something listens there but gave no Dask handshake within {timeout:g} s"
    raise PreflightError(f"cannot reach the Dask scheduler at {address} ({why}); start one with "
                         "`dask scheduler` or drop --dask-address")


def _dask_handshake(address: str, timeout: float) -> bool:
    """True when the peer at ``address`` completes Dask's comm handshake (a scheduler or worker)."""
    import asyncio

    from distributed.comm import connect

    async def probe() -> None:
        comm = await connect(address if "://" in address else f"tcp://{address}", timeout=timeout)
        await comm.close()
    from concurrent.futures import ThreadPoolExecutor
    try:  # in a thread of its own: the caller may already run an event loop (a notebook, an async test)
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, asyncio.wait_for(probe(), timeout + 1)).result()
    except Exception:  # whatever a non-Dask peer makes the comm layer raise (even a huge frame length)
        return False
    return True


def existing_store(root: str | None) -> Store:
    """The store at ``root`` (``--store``, ``$CCI_STORE`` or ./cci-store), which must already exist.

    For commands that read a store: a mistyped path is one error line, and nothing (not even an
    empty lineage database) is created there.
    """
    store = Store(root)
    if not store.root.is_dir():
        what = "is a file, not a folder" if store.root.exists() else "does not exist"
        raise PreflightError(f"store {store.root} {what}: give --store the folder `cci ingest` wrote "
                             "(default ./cci-store, or $CCI_STORE)")
    if not any((store.root / m).exists() for m in _STORE_MARKERS):
        raise PreflightError(f"store {store.root} is not a CCI store (no lineage.db, corpora/ or runs/ in it): "
                             "give --store the folder `cci ingest` wrote")
    if store.lineage_url.startswith("sqlite:///"):
        db = Path(store.lineage_url.removeprefix("sqlite:///"))
        if not db.is_file():
            raise PreflightError(f"store {store.root} has no lineage database ({db} is missing): "
                                 "give --store the folder `cci ingest` wrote, or set $CCI_LINEAGE_URL")
        _check_sqlite(db)
    return store


def _check_sqlite(db: Path) -> None:
    """The lineage database opens read-only and reads as SQLite."""
    import contextlib
    import sqlite3
    try:
        with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=30)) as conn:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise PreflightError(f"lineage database {db} cannot be read ({exc}); restore it from a backup or give "
                             "--store another store") from None


def check_positive(value: int | float | None, flag: str, minimum: int | float = 1) -> None:
    """A numeric option that must be at least ``minimum`` (when given)."""
    if value is not None and value < minimum:
        raise PreflightError(f"{flag} {value}: must be at least {minimum}")


def check_generate(store: Store, run_id: str, dataset: str, per_cluster: int, threshold: float,
                   models: str | None) -> None:
    """``cci generate``: the dataset name, the counts, and a run with the generators asked for."""
    from cci_core.generate.dataset_run import chosen_models
    from cci_core.store.store import validate_name
    validate_name(dataset, "dataset name")
    check_positive(per_cluster, "--per-cluster")
    if not 0.0 <= threshold <= 1.0:
        raise PreflightError(f"--threshold {threshold}: a confidence threshold lies in [0, 1]")
    chosen_models(store, runs.read_run(store, run_id), models)


def check_refresh(store: Store, source: str, corpus: str, run_id: str | None, dataset: str | None,
                  retrain_threshold: float, per_cluster: int) -> None:
    """``cci refresh``: the source, the corpus, the run it builds on and the dataset name."""
    from cci_core.ingest.ingest import check_ingest_request
    from cci_core.store.corpus import open_corpus
    from cci_core.store.runs import finished_run
    from cci_core.store.store import validate_name
    from flows.refresh import latest_served_run
    open_corpus(store, corpus)
    check_ingest_request(store, source, corpus)  # what its ingest stage checks, now
    if dataset is not None:
        validate_name(dataset, "dataset name")
    check_positive(per_cluster, "--per-cluster")
    if not 0.0 <= retrain_threshold:
        raise PreflightError(f"--retrain-threshold {retrain_threshold}: give a share of a cluster's size, >= 0")
    if run_id:
        finished_run(store, run_id)
    else:
        latest_served_run(store, corpus)


def check_pipeline(store: Store, source: str, corpus: str, size: tuple[int, int] | None, channels: int | None,
                   dataset: str | None, k: int | str, counts: dict[str, int]) -> None:
    """``cci run``: what can be known about the whole pipeline before its first stage."""
    from cci_core.ingest.ingest import check_ingest_request
    from cci_core.store.store import validate_name
    if dataset is not None:
        validate_name(dataset, "dataset name")
    if isinstance(k, str):  # a range to choose from, as `cci cluster --k` takes
        from cci_core.cluster.choose_k import parse_k_range
        parse_k_range(k)
    else:
        check_positive(k, "--k", 2)
    for flag, value in counts.items():
        check_positive(value, flag)
    check_ingest_request(store, source, corpus, size=size, channels=channels)  # what its ingest stage checks


def check_device(device: str | None) -> None:
    """``--device`` must name a torch device type (``cpu``, ``cuda``, ``cuda:1``, ...).

    Only the spelling is checked: the workers that train may have GPUs this process lacks.
    """
    if device is None:
        return
    import torch
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise PreflightError(f"--device {device!r}: give cpu, cuda or cuda:N (default: cuda when present)") from None


def check_prefect_api(timeout: float = DASK_CONNECT_TIMEOUT_S) -> None:
    """A configured ``PREFECT_API_URL`` must answer (any HTTP reply will do: Cloud may ask for a key).

    Unset, the CLI starts a temporary server instead, and there is nothing to check.
    """
    from prefect.settings import PREFECT_API_URL
    url = PREFECT_API_URL.value()
    if not url:
        return
    import httpx
    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=timeout)
        return
    except httpx.TimeoutException:
        why = f"no answer within {timeout:g} s"
    except httpx.ConnectError as exc:
        why = "connection refused" if "refused" in str(exc).lower() else str(exc) or "cannot connect"
    except httpx.HTTPError as exc:
        why = str(exc) or type(exc).__name__
    raise PreflightError(f"cannot reach the Prefect API at {url} ({why}); start it with `prefect server start`, "
                         "or unset PREFECT_API_URL to run on a temporary server")
