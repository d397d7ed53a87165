"""Faults of the machine as one line: a full disk, a read-only or forbidden folder, an object
store that stops answering, a lineage database that is damaged or locked.

These come up from deep inside NumPy, Zarr, pyarrow, botocore or SQLite as their own
exceptions (``OSError: [Errno 28]``, ``EndpointConnectionError``, ``DatabaseError: database
disk image is malformed``). :func:`machine_fault` turns one of them (anywhere in an exception's
cause chain) into a :class:`MachineFaultError`, a ``ValueError`` whose message names the file,
folder, endpoint or database and what to do, so the CLI prints it as one ``error:`` line.
Nothing here imports botocore or SQLAlchemy: their errors are recognised by type name.
"""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path

# what each errno means for the user, and what to do about it
_ERRNO_ADVICE = {
    errno.ENOSPC: ("no space left on the device", "free space there and run the command again"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space within the quota and run the command again"),
    errno.EROFS: ("it is on a read-only file system", "remount it read-write and run the command again"),
    errno.EACCES: ("permission denied", "give this user access to it (chmod / chown, or run as its owner)"),
    errno.EPERM: ("the operation is not permitted (an immutable file or a locked-down folder?)",
                  "give this user access to it (chattr -i, chmod / chown)"),
    errno.EIO: ("an I/O error of the disk", "check the disk (dmesg), then restore the store from a backup if "
                "`cci store verify` finds damage"),
}
# what else to do when the file is in the store the command was given
_STORE_ADVICE = {errno.ENOSPC: "or give --store a folder on a larger disk", errno.EDQUOT: "or give --store another folder",
                 errno.EROFS: "or give --store a writable folder", errno.EACCES: "or give --store a folder you can write",
                 errno.EPERM: "or give --store another folder"}
# the words an OSError without an errno (pyarrow's, for one) carries instead
_ERRNO_WORDS = (("no space left on device", errno.ENOSPC), ("disk quota exceeded", errno.EDQUOT),
                ("read-only file system", errno.EROFS), ("permission denied", errno.EACCES))
# a short write without an errno: "1408848 requested and 1343360 written"
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")
# connection errors of the object-store clients (botocore, aiobotocore / aiohttp, urllib3)
_CONNECTION_ERRORS = ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                      "ClientConnectorError", "ServerDisconnectedError", "NewConnectionError", "ProxyConnectionError")


class MachineFaultError(ValueError):
    """A fault of the machine under a command (disk, permissions, object store, lineage database),
    said in one line that names the resource and what to do."""


def _chain(exc: BaseException):
    """EXC and the exceptions it was raised from or during, innermost last (each once)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def _errno_of(exc: OSError) -> int | None:
    if exc.errno in _ERRNO_ADVICE:
        return exc.errno
    text = str(exc).lower()
    if exc.errno is None and _SHORT_WRITE.search(text):  # NumPy's tofile on a full disk says only this
        return errno.ENOSPC
    return next((code for words, code in _ERRNO_WORDS if words in text), None)


def os_fault(exc: OSError, where: str | Path | None = None, store: str | Path | None = None) -> MachineFaultError | None:
    """The one-line error for an OSError of the disk (ENOSPC, EDQUOT, EROFS, EACCES, EPERM, EIO),
    naming its file (or WHERE when the error names none); None for any other. A file in STORE
    (the command's store) also suggests another ``--store``."""
    code = _errno_of(exc)
    if code is None:
        return None
    path = exc.filename or where
    what, todo = _ERRNO_ADVICE[code]
    if code in _STORE_ADVICE and (path is None or (store is not None and Path(str(path)).is_relative_to(str(store)))):
        todo = f"{todo}, {_STORE_ADVICE[code]}"
    place = f"{path}" if path else "the store"
    if code in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(path) if path else None
        shown = f" ({free / 2**20:.1f} MiB free)" if free is not None else ""
        return MachineFaultError(f"cannot write {place}: {what}{shown}; {todo}")
    verb = "cannot write" if code == errno.EROFS else "cannot use"
    return MachineFaultError(f"{verb} {place}: {what}; {todo}")


def connection_fault(exc: BaseException) -> MachineFaultError | None:
    """The one-line error for an object store that does not answer (botocore, aiohttp, urllib3)."""
    if type(exc).__name__ not in _CONNECTION_ERRORS:
        return None
    from urllib.parse import urlsplit
    url = (getattr(exc, "kwargs", None) or {}).get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL") or ""
    parts = urlsplit(url)
    endpoint = f"{parts.scheme}://{parts.netloc}" if parts.netloc else "the object store's endpoint"
    what = f" while reading or writing {parts.path.lstrip('/')}" if parts.path.strip("/") else ""
    return MachineFaultError(f"cannot reach the object store at {endpoint}{what} ({type(exc).__name__}): check "
                             "that the service runs and AWS_ENDPOINT_URL names it, then run the command again")


def lineage_fault(exc: BaseException, database: str | None = None) -> MachineFaultError | None:
    """The one-line error for a lineage database that SQLite finds damaged or locked."""
    name = type(exc).__name__
    if name not in ("DatabaseError", "OperationalError"):
        return None
    text = str(getattr(exc, "orig", None) or exc).lower()
    db = database or "the lineage database (lineage.db in the store, or $CCI_LINEAGE_URL)"
    if "locked" in text or "busy" in text:
        return MachineFaultError(f"lineage database {db} is locked by another process; wait for it to finish (or stop "
                                 "it) and run the command again")
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return MachineFaultError(f"lineage database {db} is damaged and cannot be read ({text.splitlines()[0]}); "
                                 "restore it from a "
                                 "backup (`cci store verify` checks the rest of the store)")
    if "readonly database" in text or "read-only" in text:
        return MachineFaultError(f"lineage database {db} is read-only; make it and its folder writable (or give "
                                 "--store a writable copy) and run the command again")
    if "disk is full" in text or "disk i/o error" in text:
        return MachineFaultError(f"lineage database {db}: {text.splitlines()[0]}; free space on its disk (or check "
                                 "the disk) and run the command again")
    return None


def machine_fault(exc: BaseException, where: str | Path | None = None, database: str | None = None,
                  store: str | Path | None = None) -> MachineFaultError | None:
    """EXC (or an exception it was raised from) as a :class:`MachineFaultError`, else None.

    Parameters
    ----------
    exc : what a command raised
    where : the store (or file) the command writes, named when the error names no file
    database : the lineage database the command uses, named in a lineage fault
    store : the command's store: a fault inside it also suggests another ``--store``
    """
    for e in _chain(exc):
        if isinstance(e, MachineFaultError):
            return e
        fault = (os_fault(e, where, store) if isinstance(e, OSError) else None) or connection_fault(e) \
            or lineage_fault(e, database)
        if fault is not None:
            return fault
    return None


def is_machine_fault(exc: BaseException | None) -> bool:
    """True when EXC is (or was raised from) a fault :func:`machine_fault` explains in one line."""
    return exc is not None and machine_fault(exc) is not None


def fault_in_text(text: str) -> bool:
    """Whether an exception's repr (all a Dask worker's "Compute Failed" log keeps of it) is one of
    the faults :func:`machine_fault` explains: a full, read-only or forbidden disk, an object store
    that does not answer."""
    name, low = text.partition("(")[0], text.lower()
    if name in _CONNECTION_ERRORS:
        return True
    return name in ("OSError", "PermissionError", "IOError") and (
        any(words in low for words, _ in _ERRNO_WORDS) or _SHORT_WRITE.search(low) is not None)


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the file system of PATH (its nearest existing folder), None when unknown."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def fault_context(*values) -> dict:
    """``where`` and ``database`` for :func:`machine_fault` from a call's arguments: the first
    :class:`~cci_core.store.store.Store` or object with a ``store_root`` among VALUES, else the
    first path (a file the call writes, such as ``cci predict -o``)."""
    from cci_core.store.store import Store
    for v in values:
        root = v.root if isinstance(v, Store) else getattr(v, "store_root", None)
        if root:
            store = v if isinstance(v, Store) else Store(root)
            try:
                url = store.lineage_url
            except ValueError:
                url = None
            # a server URL may hold a password: only a SQLite file is named
            database = url.removeprefix("sqlite:///") if url and url.startswith("sqlite:///") else None
            return {"where": str(store.root), "database": database, "store": str(store.root)}
    path = next((v for v in values if isinstance(v, (str, os.PathLike))), None)
    return {"where": str(path)} if path is not None else {}
