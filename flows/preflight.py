"""Checks the CLI runs before it starts a Prefect server or a Dask cluster.

Each raises :class:`PreflightError` (a ``ValueError``) with one line naming the value at
fault and what to do, so the CLI prints it as ``error: ...`` and exits 1 within a second
instead of after a server start-up and a logged traceback.
"""
from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from cci_core.store import fs, runs
from cci_core.store.store import Store

DASK_CONNECT_TIMEOUT_S = 2.5
# a live scheduler on a busy machine can take seconds to answer the handshake once connected
DASK_HANDSHAKE_TIMEOUT_S = 10.0
# what a store root holds once anything was written to it (docs/architecture.md, "The store layout")
_STORE_MARKERS = ("lineage.db", "corpora", "runs", "datasets", "palettes")


# a writing command refuses a store whose disk has less free than this (a run writes more: what
# it really needs is only known once it runs, where a full disk is one line too)
MIN_FREE_BYTES = 1 << 20


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


def check_dask_address(address: str | None, timeout: float = DASK_CONNECT_TIMEOUT_S,
                       handshake_timeout: float = DASK_HANDSHAKE_TIMEOUT_S) -> None:
    """Refuse a ``--dask-address`` nothing answers on (a TCP connect, ``timeout`` seconds) or that
    does not speak Dask (no handshake within ``handshake_timeout`` seconds)."""
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
        if _dask_handshake(address, handshake_timeout):
            return
        why = f"something listens there but gave no Dask handshake within {handshake_timeout:g} s"
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


# object stores whose URLs name a bucket (or container) first: the bucket must exist
_BUCKET_PROTOCOLS = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")


def check_object_store(url: str, timeout: float = DASK_CONNECT_TIMEOUT_S) -> None:
    """A store on object storage (``s3://bucket/prefix``): a lineage database that is not in the store
    (``$CCI_LINEAGE_URL``), and a bucket that exists and answers with these credentials.

    The endpoint and credentials are the provider's own variables (for S3: ``AWS_ENDPOINT_URL``,
    ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ...), read by fsspec.
    """
    if not os.environ.get("CCI_LINEAGE_URL"):
        raise PreflightError(f"store {url} is on object storage, where the lineage database cannot live: set "
                             "$CCI_LINEAGE_URL to a database every worker reaches (postgresql://USER@HOST/DB; "
                             "sqlite:////PATH/lineage.db only when every worker shares that disk)")
    from fsspec.core import url_to_fs
    protocol = url.split("://", 1)[0].lower()
    # one quick attempt: a wrong endpoint is an error line within seconds, not minutes of retries
    quick = ({"config_kwargs": {"connect_timeout": timeout, "read_timeout": timeout,
                                "retries": {"max_attempts": 1}}, "skip_instance_cache": True}
             if protocol in ("s3", "s3a") else {})
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "AWS S3") if protocol in ("s3", "s3a") else f"{protocol}://"
    try:
        filesystem, path = url_to_fs(url, **quick)
    except ImportError as exc:
        raise PreflightError(f"store {url}: the filesystem for {protocol}:// is not installed ({exc}); install "
                             "it (s3fs for s3://, gcsfs for gs://, adlfs for az://)") from None
    except ValueError as exc:
        raise PreflightError(f"store {url}: {exc}; give --store a folder or a URL such as s3://BUCKET/PREFIX") \
            from None
    if protocol not in _BUCKET_PROTOCOLS:
        return
    bucket = path.split("/", 1)[0]
    try:
        filesystem.info(bucket)
    except FileNotFoundError:
        raise PreflightError(f"store {url}: bucket {bucket!r} does not exist at {endpoint}; create it (for S3: "
                             f"`aws s3 mb s3://{bucket}`) or give --store a bucket that exists") from None
    except PermissionError as exc:
        raise PreflightError(f"store {url}: access to bucket {bucket!r} at {endpoint} is denied ({exc}); check "
                             "the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE)") from None
    except Exception as exc:  # noqa: BLE001 - the provider's own exceptions (botocore: no credentials, no endpoint)
        why = str(exc) or type(exc).__name__
        if "credential" in why.lower():
            raise PreflightError(f"store {url}: no credentials for {endpoint} ({why}); set AWS_ACCESS_KEY_ID and "
                                 "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)") from None
        raise PreflightError(f"store {url}: cannot reach the object store at {endpoint} ({why}); check "
                             "AWS_ENDPOINT_URL (or the provider's endpoint) and that the service runs") from None


def _store_root(root: str | None) -> str | None:
    """The store root a command was given (``--store``, else ``$CCI_STORE``; None: the default folder)."""
    return root or os.environ.get("CCI_STORE") or None


def new_store(root: str | None) -> Store:
    """The store a command that may create it works on (``cci ingest``, ``cci run``, a palette of a file).

    A local folder is created when the command writes; a URL is checked first (lineage database,
    bucket), so a missing bucket is one error line, not a failure inside the flow.
    """
    given = _store_root(root)
    if given is not None and fs.is_url(given):
        check_object_store(given)
    return Store(given)


def existing_store(root: str | None) -> Store:
    """The store at ``root`` (``--store``, ``$CCI_STORE`` or ./cci-store), which must already exist.

    For commands that read a store: a mistyped path is one error line, and nothing (not even an
    empty lineage database) is created there. A URL is checked as :func:`check_object_store` does.
    """
    given = _store_root(root)
    remote = given is not None and fs.is_url(given)
    if remote:
        check_object_store(given)
    store = Store(given)
    if remote:
        if not any((store.root / m).exists() for m in _STORE_MARKERS):
            raise PreflightError(f"store {given} holds no CCI store (no corpora/ or runs/ under it): give --store "
                                 "the URL `cci ingest` wrote to")
    elif not store.root.is_dir():
        what = "is a file, not a folder" if store.root.exists() else "does not exist"
        raise PreflightError(f"store {store.root} {what}: give --store the folder `cci ingest` wrote "
                             "(default ./cci-store, or $CCI_STORE)")
    elif not any((store.root / m).exists() for m in _STORE_MARKERS):
        raise PreflightError(f"store {store.root} is not a CCI store (no lineage.db, corpora/ or runs/ in it): "
                             "give --store the folder `cci ingest` wrote")
    if store.lineage_url.startswith("sqlite:///"):
        db = Path(store.lineage_url.removeprefix("sqlite:///"))
        if not db.is_file():
            raise PreflightError(f"store {store.root} has no lineage database ({db} is missing): "
                                 "give --store the folder `cci ingest` wrote, or set $CCI_LINEAGE_URL")
        _check_sqlite(db)
    return store


def _check_sqlite(db: Path, write: bool = False) -> None:
    """The lineage database reads as SQLite and ``PRAGMA quick_check`` finds no damage (on a
    read-only store too); with ``write``, its write lock is free within a few seconds."""
    from cci_core.store.lineage_sqlite import check_sqlite
    try:
        check_sqlite(db, write=write)
    except ValueError as exc:
        raise PreflightError(str(exc)) from None


def check_writable_store(root: str | None) -> None:
    """A command that writes the store: the store (or the folder it will be made in), its corpora/,
    runs/, datasets/ and palettes/ folders and its lineage database can be written, and its disk
    is not full. A read-only store is one line here, before a server starts; reading commands
    (``cci corpus info``, ``cci lineage``, ``cci predict``, ``cci datasets``) still work on it."""
    import errno
    import tempfile

    from cci_core.store.machine_faults import free_bytes
    given = _store_root(root)
    if given is not None and fs.is_url(given):
        return  # an object store: check_object_store
    store = Store(given)
    top = store.root
    while not top.exists() and top != top.parent:  # a new store: the folder it will be made in
        top = top.parent
    folders = [top] + [store.root / d for d in _STORE_MARKERS if (store.root / d).is_dir()]
    for folder in folders:
        try:
            fd, probe = tempfile.mkstemp(prefix=".cci-write-probe-", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            why = {errno.EROFS: "a read-only file system", errno.EACCES: "permission denied",
                   errno.EPERM: "not permitted"}.get(exc.errno, exc.strerror or str(exc))
            free = free_bytes(folder)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise PreflightError(f"store {store.root}: its disk is full ({(free or 0) / 2**20:.1f} MiB free); "
                                     "free space there or give --store a folder on a larger disk") from None
            read_only = "is read-only" if exc.errno == errno.EROFS else "cannot be written"
            raise PreflightError(f"store {store.root} {read_only} ({folder}: {why}): make it writable (remount "
                                 "it read-write, or chmod / chown it for this user) or give --store a writable "
                                 "folder; reading commands (cci corpus info, lineage, predict, datasets) still "
                                 "work on it") from None
    free = free_bytes(top)
    if free is not None and free < MIN_FREE_BYTES:
        raise PreflightError(f"store {store.root}: its disk is full ({free / 2**20:.1f} MiB free); free space "
                             "there or give --store a folder on a larger disk")
    if store.lineage_url.startswith("sqlite:///"):
        db = Path(store.lineage_url.removeprefix("sqlite:///"))
        if db.is_file():
            _check_sqlite(db, write=True)


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
    from cci_core.store.store import MAX_NAME, validate_name
    if dataset is not None:
        validate_name(dataset, "dataset name")
    longest = f"{corpus}-v9999-12345678-r12345678"  # the pipeline's refined run: CORPUS-v<version>-<hash>-r<hash>
    if len(longest) > MAX_NAME:
        raise PreflightError(f"corpus name {corpus!r} is {len(corpus)} characters: `cci run` names its runs "
                             f"CORPUS-v<version>-<8 hex digits>-r<8 hex digits>, at most {MAX_NAME} characters; "
                             f"give --corpus a name of at most {MAX_NAME - len(longest) + len(corpus)} characters")
    if isinstance(k, str):  # a range to choose from, as `cci cluster --k` takes
        from cci_core.cluster.choices import parse_k_range  # no sklearn, scipy or dask.array
        parse_k_range(k)
    else:
        check_positive(k, "--k", 2)
    for flag, value in counts.items():
        check_positive(value, flag)
    check_ingest_request(store, source, corpus, size=size, channels=channels)  # what its ingest stage checks
    from cci_core.common.shapes import MODEL_SIZES  # no torch
    if size is not None and (size[0] != size[1] or size[0] not in MODEL_SIZES):  # refine takes any; train does not
        raise PreflightError(f"--size {size[0]}x{size[1]}: `cci run` ends by training generators, which make square "
                             f"{', '.join(f'{s}x{s}' for s in MODEL_SIZES)} images; give one of those, or run the "
                             "stages that take any size yourself (cci ingest, cci cluster, cci refine, cci predict)")


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
