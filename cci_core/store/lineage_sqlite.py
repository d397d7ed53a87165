"""The SQLite file behind a lineage database: where it is, whether this process may write it, and
the pre-flight check that it reads, is not damaged and gives up its write lock (issue 28).

A store on a read-only mount still reads its lineage: :func:`read_only_engine` opens the file
without writing anything (no journal, no WAL index) where :func:`writable` says it cannot.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import sqlalchemy as sa

from cci_core.store.machine_faults import lineage_fault


class LineageDatabaseError(ValueError):
    """The lineage database cannot be opened (the message names it and what to check)."""


# how long a command waits for another process's write lock on a SQLite lineage database before
# its preflight says the database is locked (a lineage write holds it for milliseconds)
LOCK_WAIT_S = 5.0


def sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (None for a server database or an in-memory one)."""
    try:
        u = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return None
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def writable(db: Path) -> bool:
    """Whether this process may write the database file and its folder (SQLite writes its journal
    beside it): false on a read-only mount, for another user's file, for an immutable one."""
    return os.access(db, os.W_OK) and os.access(db.parent, os.W_OK | os.X_OK)


def read_only_uri(db: Path) -> str:
    """The SQLite URI that only reads ``db`` where this process cannot write (a read-only mount):
    ``mode=ro``, and ``immutable=1`` when no write-ahead log is pending beside it, because SQLite
    cannot create the WAL index (``-shm``) there; a pending log (a store copied while a writer had
    it open) is read through its own ``-shm``."""
    wal = db.with_name(db.name + "-wal")
    pending = wal.is_file() and wal.stat().st_size > 0
    return f"{db.resolve().as_uri()}?mode=ro" + ("" if pending else "&immutable=1")


def read_only_engine(db: Path) -> sa.Engine:
    """An engine that only reads ``db`` (:func:`read_only_uri`); no journal mode is set (that would write)."""
    import sqlite3
    uri = read_only_uri(db)
    return sa.create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False))


def check_sqlite(db: Path, write: bool = False, timeout: float = LOCK_WAIT_S) -> None:
    """Preflight of a SQLite lineage database: it reads as SQLite and ``PRAGMA quick_check`` finds
    no damage; with ``write``, it is writable and its write lock is free within ``timeout`` seconds.

    Raises :class:`LineageDatabaseError` with one line naming ``db`` and what to do.
    """
    import sqlite3
    read_only = not writable(db)
    uri = read_only_uri(db) if read_only else f"{db.resolve().as_uri()}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=timeout)) as conn:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError(f"database disk image is malformed: {problems[0]}")
        if write and read_only:
            raise sqlite3.OperationalError("attempt to write a readonly database")
        if write:
            with contextlib.closing(sqlite3.connect(str(db), timeout=timeout, isolation_level=None)) as conn:
                conn.execute("BEGIN IMMEDIATE")  # the write lock: waits up to `timeout` for another writer
                conn.execute("ROLLBACK")
    except sqlite3.DatabaseError as exc:
        fault = lineage_fault(exc, str(db))
        if fault is not None:
            raise LineageDatabaseError(str(fault)) from None
        raise LineageDatabaseError(f"lineage database {db} cannot be read ({exc}); restore it from a backup "
                                   "(`cci store verify` checks the rest of the store)") from None
