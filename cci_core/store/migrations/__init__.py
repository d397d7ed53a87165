"""Schema creation and upgrades of the lineage database: one Alembic path for SQLite and PostgreSQL.

:func:`ensure_schema` runs whenever a :class:`~cci_core.store.lineage.LineageStore` opens a
database. At head it costs one look at the version table; otherwise it takes the database's
migration lock (SQLite: ``BEGIN IMMEDIATE``, the write lock; PostgreSQL: a transaction-scoped
advisory lock), looks again (another opener may have finished meanwhile) and upgrades, all in
that one transaction. A database made before migrations existed (the tables, no version table)
is stamped at the first revision, keeping its records, then upgraded.

The environment (``env.py``) and the revisions (``versions/``) are plain modules of this package,
so they ship with it; the Alembic configuration is built here, no ``alembic.ini`` is read. A new
revision: a file in ``versions/`` with ``revision``, ``down_revision`` = the current head and
``upgrade()``/``downgrade()`` (see the two there), the table definitions in ``lineage.py``
changed to match, and :data:`HEAD` set to it (a test checks that it is Alembic's head).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

HEAD = "0002"  # the newest revision in versions/: what the fast path compares with, without importing Alembic
FIRST = "0001"  # the schema as it was before migrations
VERSION_TABLE = "cci_lineage_version"  # not Alembic's default name: a PostgreSQL database may hold another app's
_LOCK_KEY = 0x6C696E65616765  # PostgreSQL advisory lock id of these migrations ("lineage")
_HERE = Path(__file__).resolve().parent


class SchemaError(RuntimeError, ValueError):
    """The database holds something these migrations cannot bring to head (the message says what to do)."""


def current_revision(conn: sa.Connection) -> str | None:
    """The revision the database is at (None: no version table yet)."""
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return None
    return conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def ensure_schema(engine: sa.Engine) -> None:
    """Bring the lineage database at ``engine`` to :data:`HEAD` (nothing to do: one query)."""
    with engine.connect() as conn:
        if current_revision(conn) == HEAD:
            return
    with _migration_lock(engine) as conn:
        _upgrade(conn, engine.url.render_as_string(hide_password=True))


def alembic_config(conn: sa.Connection | None = None):
    """The Alembic configuration of these migrations, run on ``conn`` when given."""
    from alembic.config import Config
    cfg = Config()
    cfg.set_main_option("script_location", str(_HERE))
    if conn is not None:
        cfg.attributes["connection"] = conn
    return cfg


def _upgrade(conn: sa.Connection, where: str) -> None:
    from alembic import command
    from alembic.script import ScriptDirectory
    current = current_revision(conn)
    if current == HEAD:  # another opener upgraded it while we waited for the lock
        return
    cfg = alembic_config(conn)
    if current is not None and current not in {s.revision for s in ScriptDirectory.from_config(cfg).walk_revisions()}:
        raise SchemaError(f"lineage database {where} is at schema revision {current!r}, which this version of "
                          f"cci does not know (its newest is {HEAD!r}): upgrade cci, or use a database of its own")
    if current is None and sa.inspect(conn).has_table("artifacts"):
        _check_unversioned(conn, where)
        command.stamp(cfg, FIRST)
    command.upgrade(cfg, "head")


def _check_unversioned(conn: sa.Connection, where: str) -> None:
    """Tables made before migrations are stamped only if they are the lineage tables of then."""
    insp = sa.inspect(conn)
    columns = {c["name"] for c in insp.get_columns("artifacts")}
    expected = {"id", "kind", "name", "uri", "content_hash", "size", "created_at", "params", "metrics",
                "code_version", "producer"}
    if columns != expected or not insp.has_table("artifact_inputs"):
        raise SchemaError(f"lineage database {where} has an 'artifacts' table that is not a CCI lineage table "
                          f"(columns {sorted(columns)}): point $CCI_LINEAGE_URL at a database of its own")


@contextlib.contextmanager
def _migration_lock(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection in a transaction that holds the database's migration lock until it ends."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
            yield conn
        return
    if engine.dialect.name != "sqlite":
        with engine.begin() as conn:  # no lock we know of: concurrent first openers may collide
            yield conn
        return
    # pysqlite opens transactions itself, and not before DDL; take over (SQLAlchemy's documented
    # recipe) so that the migration runs in one transaction that holds the write lock from its start
    locked = sa.create_engine(engine.url, connect_args={"timeout": 60}, poolclass=sa.pool.NullPool)

    @sa.event.listens_for(locked, "connect")
    def _manual(dbapi_conn, _):
        dbapi_conn.isolation_level = None

    @sa.event.listens_for(locked, "begin")
    def _immediate(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    try:
        with locked.begin() as conn:
            yield conn
    finally:
        locked.dispose()
