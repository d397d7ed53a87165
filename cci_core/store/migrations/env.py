"""Alembic environment of the lineage database.

Run by :func:`cci_core.store.migrations.ensure_schema` with the connection it holds (inside its
transaction, under its lock) in ``config.attributes["connection"]``; without one (a developer's
``alembic.command`` call with ``sqlalchemy.url`` set) it opens its own.
"""
import sqlalchemy as sa
from alembic import context

from cci_core.store.lineage import engine_url, metadata
from cci_core.store.migrations import VERSION_TABLE


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()


_conn = context.config.attributes.get("connection")
if context.is_offline_mode():
    raise RuntimeError("the lineage migrations run online only (on a connection)")
if _conn is not None:
    _run(_conn)
else:
    _engine = sa.create_engine(engine_url(context.config.get_main_option("sqlalchemy.url")))
    with _engine.begin() as _c:
        _run(_c)
    _engine.dispose()
