"""The artifact store: one root folder holding corpora, runs, datasets and the lineage DB.

Layout (docs/architecture.md)::

    <root>/lineage.db
    <root>/corpora/<name>/images.zarr, index.parquet, corpus.json, quarantine.parquet
    <root>/runs/<run-id>/...
    <root>/datasets/<name>/<version>/...

The root is a local folder or an fsspec URL (``s3://bucket/prefix``); paths inside it are
``Path`` or ``UPath`` (:mod:`cci_core.store.fs`). Every file another process may read is written
atomically (temp file + rename locally, one PUT on an object store). Anything
bigger is written in a hidden staging folder that names its writer (:func:`make_staging`);
the next writer removes staging folders whose writer is gone (:func:`remove_stale_staging`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from cci_core.store import fs
from cci_core.store.fs import AnyPath
from cci_core.store.record_check import parse_json
from cci_core.store.writers import pid_alive, process_identity, utc_now, writer_alive

__all__ = ["Store", "validate_name", "hash_files", "utc_now", "atomic_write_bytes", "atomic_write_json",
           "read_json", "atomic_write_parquet", "file_lock", "pid_alive", "process_identity", "writer_alive",
           "make_staging", "discard_staging", "staging_owner", "remove_stale_staging", "publish_dir", "staging"]

DEFAULT_ROOT = "./cci-store"
MAX_NAME = 128  # characters of a corpus, run or dataset name (a folder name)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def validate_name(name: str, what: str = "name") -> str:
    """Names become folder names: letters, digits, '.', '_', '-' only."""
    if not _NAME_RE.match(name or "") or ".." in name:
        raise ValueError(f"invalid {what} {name!r}: use letters, digits, '.', '_' and '-' "
                         "(starting with a letter or digit)")
    return name


def derived_name(name: str, suffix: str, what: str, flag: str) -> str:
    """``NAME-SUFFIX``, the default name of something made from NAME (``RUN-refined``); when that
    is no valid name (too long) the error says the name was derived and which option names it."""
    derived = f"{name}-{suffix}"
    try:
        return validate_name(derived, what)
    except ValueError:
        raise ValueError(f"the default {what} {derived!r} (made from {name!r} + '-{suffix}') is {len(derived)} "
                         f"characters, more than {MAX_NAME}: give {flag} with a shorter name") from None


class Store:
    """Paths inside one artifact store root: a local folder or an fsspec URL (``s3://bucket/prefix``).

    The root comes from the argument, else ``$CCI_STORE``, else ``./cci-store``; a local root is
    made absolute, a URL is kept as given (a ``UPath``). The lineage database URL comes from
    ``$CCI_LINEAGE_URL``, else SQLite in a local root; a URL root has no default (SQLite cannot
    live in an object store), so reading :attr:`lineage_url` without one is an error.
    """

    def __init__(self, root: str | Path | None = None, lineage_url: str | None = None):
        root = root or os.environ.get("CCI_STORE") or DEFAULT_ROOT
        self.root: AnyPath = fs.as_path(root) if fs.is_url(root) else Path(root).resolve()
        self._lineage_url = lineage_url or os.environ.get("CCI_LINEAGE_URL")

    @property
    def is_local(self) -> bool:
        return fs.is_local(self.root)

    @property
    def lineage_url(self) -> str:
        """The SQLAlchemy URL of the lineage database."""
        if self._lineage_url:
            return self._lineage_url
        if not self.is_local:
            raise ValueError(f"store {self.root} is on an object store, where the lineage database cannot live: "
                             "set $CCI_LINEAGE_URL to a database every worker reaches "
                             "(e.g. postgresql+psycopg://user@host/cci)")
        return f"sqlite:///{self.root / 'lineage.db'}"

    @lineage_url.setter
    def lineage_url(self, url: str | None) -> None:
        self._lineage_url = url

    def ensure(self) -> "Store":
        fs.makedirs(self.root)
        return self

    def corpus_dir(self, name: str) -> AnyPath:
        return self.root / "corpora" / validate_name(name, "corpus name")

    def run_dir(self, run_id: str) -> AnyPath:
        return self.root / "runs" / validate_name(run_id, "run id")

    def dataset_dir(self, name: str) -> AnyPath:
        return self.root / "datasets" / validate_name(name, "dataset name")

    def corpora(self) -> list[str]:
        base = self.root / "corpora"
        # a folder with an index but no corpus.json is listed too: a corpus whose record is lost, not nothing
        return sorted(p.name for p in base.iterdir() if (p / "corpus.json").exists() or (p / "index.parquet").exists()) \
            if base.exists() else []

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"


def hash_files(paths) -> str:
    """sha256 over the bytes of the given files, in order."""
    h = hashlib.sha256()
    for p in paths:
        with fs.as_path(p).open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


_tmp_path = fs.tmp_sibling


def atomic_write_bytes(path: str | Path, data: bytes) -> AnyPath:
    """Write a whole file so that readers see the old or the new bytes, never a part: temp file,
    fsync and ``os.replace`` locally; one PUT on an object store."""
    path = fs.as_path(path)
    if not fs.is_local(path):
        return fs.write_bytes(path, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        _drop(tmp)  # a full disk must not also keep the part written
        raise
    return path


def _drop(path: Path) -> None:
    """Remove a file left by a failed write; a failure to remove it never hides the first error."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def atomic_write_json(path: str | Path, obj: Any) -> AnyPath:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: str | Path) -> Any:
    """The parsed JSON file at PATH; one that is not JSON is a RecordError (a ValueError) naming it."""
    return parse_json(path, "restore it from a backup or write it again with the command that made it")


def atomic_write_parquet(path: str | Path, df: pd.DataFrame) -> AnyPath:
    path = fs.as_path(path)
    if not fs.is_local(path):
        return fs.write_parquet(path, df, index=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        _drop(tmp)
        raise
    return path


# ----- staging folders and their writers --------------------------------------------------------

OWNER_FILE = ".owner.json"
STAGING_PREFIX = ".staging-"
# A staging folder without an owner file is younger than this while its writer is starting.
_UNOWNED_GRACE_S = 120.0


def file_lock(path: str | Path):
    """An exclusive lock on ``path`` for a short read-check-write against other processes
    (:func:`cci_core.store.fs.lock`: an OS file lock locally, a conditional-put lock object on an
    object store), released when the block ends."""
    return fs.lock(path)


def make_staging(parent: str | Path, label: str = "") -> AnyPath:
    """A fresh hidden folder ``parent/.staging-[label-]<hex>`` that records this process as its writer."""
    parent = fs.as_path(parent)
    path = parent / f"{STAGING_PREFIX}{label + '-' if label else ''}{uuid.uuid4().hex[:12]}"
    if fs.is_local(path):
        path.mkdir(parents=True)
    try:
        atomic_write_json(path / OWNER_FILE, process_identity())
    except BaseException:  # a full disk: not even the owner file fits; leave no folder behind
        fs.rmtree(path, ignore_errors=True)
        raise
    return path


def discard_staging(path: str | Path) -> None:
    """Remove a staging folder, its owner file last: a removal cut short (the writer killed while it
    cleans up) leaves a folder that still names its dead writer, which the next writer removes at
    once, not an ownerless one that waits out the grace period."""
    path = fs.as_path(path)
    with contextlib.suppress(OSError):
        if fs.is_local(path):
            for child in path.iterdir():
                if child.name == OWNER_FILE:
                    continue
                if child.is_dir():
                    fs.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
    fs.rmtree(path, ignore_errors=True)


def staging_owner(path: str | Path) -> dict | None:
    try:
        return read_json(fs.as_path(path) / OWNER_FILE)
    except (OSError, ValueError):
        return None


def remove_stale_staging(parent: str | Path) -> list[AnyPath]:
    """Remove the staging folders under ``parent`` whose writer is gone (killed); returns them.

    A folder without an owner file counts as stale once it is older than a short grace period
    (its writer may be between ``mkdir`` and writing the file).
    """
    parent = fs.as_path(parent)
    removed = []
    if not parent.exists():
        return removed
    for path in parent.glob(f"{STAGING_PREFIX}*"):
        if not path.is_dir():
            continue
        owner = staging_owner(path)
        if owner is None:
            try:
                stale = time.time() - fs.mtime(path) > _UNOWNED_GRACE_S
            except OSError:
                continue
        else:
            stale = not writer_alive(owner)
        if stale:
            fs.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def publish_dir(staging: str | Path, final: str | Path) -> AnyPath:
    """Move a finished staging folder to its content-addressed place (its lineage already
    written). When ``final`` exists the same content is already published: the copy is dropped.

    On an object store the move is a copy, so the folder's top-level ``.json`` records (what
    readers check, e.g. ``palette.json``) are copied last."""
    staging, final = fs.as_path(staging), fs.as_path(final)
    fs.unlink(staging / OWNER_FILE, missing_ok=True)
    if final.exists():
        fs.rmtree(staging, ignore_errors=True)
    elif fs.is_local(staging):
        os.replace(staging, final)
    else:
        fs.move(staging, final, last=tuple(p.name for p in staging.glob("*.json")))
    return final


@contextlib.contextmanager
def staging(parent: str | Path, label: str = "") -> Iterator[AnyPath]:
    """A staging folder under ``parent`` for one writer: stale ones of killed writers are removed
    first; this one is removed when the block fails (or was not published with
    :func:`publish_dir`). A kill leaves it for the next writer to remove."""
    remove_stale_staging(parent)
    path = make_staging(parent, label)
    try:
        yield path
    finally:
        with contextlib.suppress(Exception):  # an unreachable object store: the first error is the one to see
            if path.exists():
                discard_staging(path)
