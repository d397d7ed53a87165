"""The artifact store: one root folder holding corpora, runs, datasets and the lineage DB.

Layout (docs/architecture.md)::

    <root>/lineage.db
    <root>/corpora/<name>/images.zarr, index.parquet, corpus.json, quarantine.parquet
    <root>/runs/<run-id>/...
    <root>/datasets/<name>/<version>/...

Every file another process may read is written atomically (temp file + rename). Anything
bigger is written in a hidden staging folder that names its writer (:func:`make_staging`);
the next writer removes staging folders whose writer is gone (:func:`remove_stale_staging`).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

DEFAULT_ROOT = "./cci-store"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def validate_name(name: str, what: str = "name") -> str:
    """Names become folder names: letters, digits, '.', '_', '-' only."""
    if not _NAME_RE.match(name or "") or ".." in name:
        raise ValueError(f"invalid {what} {name!r}: use letters, digits, '.', '_' and '-' "
                         "(starting with a letter or digit)")
    return name


class Store:
    """Paths inside one artifact store root (a local folder).

    The root comes from the argument, else ``$CCI_STORE``, else ``./cci-store``.
    The lineage database URL comes from ``$CCI_LINEAGE_URL``, else SQLite in the root.
    """

    def __init__(self, root: str | Path | None = None, lineage_url: str | None = None):
        self.root = Path(root or os.environ.get("CCI_STORE") or DEFAULT_ROOT).resolve()
        self.lineage_url = (lineage_url or os.environ.get("CCI_LINEAGE_URL")
                            or f"sqlite:///{self.root / 'lineage.db'}")

    def ensure(self) -> "Store":
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    def corpus_dir(self, name: str) -> Path:
        return self.root / "corpora" / validate_name(name, "corpus name")

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / validate_name(run_id, "run id")

    def dataset_dir(self, name: str) -> Path:
        return self.root / "datasets" / validate_name(name, "dataset name")

    def corpora(self) -> list[str]:
        base = self.root / "corpora"
        return sorted(p.name for p in base.iterdir() if (p / "corpus.json").exists()) if base.exists() else []

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"


def hash_files(paths) -> str:
    """sha256 over the bytes of the given files, in order."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def utc_now() -> str:
    """The current UTC time as ISO 8601 to the second: the timestamp of every JSON record."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def atomic_write_parquet(path: str | Path, df: pd.DataFrame) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


# ----- staging folders and their writers --------------------------------------------------------

OWNER_FILE = ".owner.json"
STAGING_PREFIX = ".staging-"
# A staging folder without an owner file is younger than this while its writer is starting.
_UNOWNED_GRACE_S = 120.0


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An OS file lock on ``path`` (created if missing), released when the block ends or the
    process dies: guards a short read-check-write against other processes on this host."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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


def make_staging(parent: str | Path, label: str = "") -> Path:
    """A fresh hidden folder ``parent/.staging-[label-]<hex>`` that records this process as its writer."""
    parent = Path(parent)
    path = parent / f"{STAGING_PREFIX}{label + '-' if label else ''}{uuid.uuid4().hex[:12]}"
    path.mkdir(parents=True)
    atomic_write_json(path / OWNER_FILE, process_identity())
    return path


def staging_owner(path: str | Path) -> dict | None:
    try:
        return read_json(Path(path) / OWNER_FILE)
    except (OSError, ValueError):
        return None


def remove_stale_staging(parent: str | Path) -> list[Path]:
    """Remove the staging folders under ``parent`` whose writer is gone (killed); returns them.

    A folder without an owner file counts as stale once it is older than a short grace period
    (its writer may be between ``mkdir`` and writing the file).
    """
    parent = Path(parent)
    removed = []
    if not parent.exists():
        return removed
    for path in parent.glob(f"{STAGING_PREFIX}*"):
        if not path.is_dir():
            continue
        owner = staging_owner(path)
        if owner is None:
            try:
                stale = time.time() - path.stat().st_mtime > _UNOWNED_GRACE_S
            except OSError:
                continue
        else:
            stale = not writer_alive(owner)
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def publish_dir(staging: str | Path, final: str | Path) -> Path:
    """Move a finished staging folder to its content-addressed place (its lineage already
    written). When ``final`` exists the same content is already published: the copy is dropped."""
    staging, final = Path(staging), Path(final)
    (staging / OWNER_FILE).unlink(missing_ok=True)
    if final.exists():
        shutil.rmtree(staging, ignore_errors=True)
    else:
        os.replace(staging, final)
    return final


@contextlib.contextmanager
def staging(parent: str | Path, label: str = "") -> Iterator[Path]:
    """A staging folder under ``parent`` for one writer: stale ones of killed writers are removed
    first; this one is removed when the block fails (or was not published with
    :func:`publish_dir`). A kill leaves it for the next writer to remove."""
    remove_stale_staging(parent)
    path = make_staging(parent, label)
    try:
        yield path
    finally:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
