"""The lineage store: one record per artifact, linked to the artifacts it was made from.

Records live in a SQL database reached through SQLAlchemy: SQLite in the store by default, or
PostgreSQL (``postgresql://user@host/db``, through psycopg 3) for many writers on many machines.
Opening a database creates or upgrades its schema (:mod:`cci_core.store.migrations`, Alembic).
An artifact id is derived from its content and its place (:mod:`cci_core.store.artifact_ids`):
recording the same thing twice returns the same record, two runs of the same content keep one each.

URIs are stored relative to the store root (``store://corpora/fmnist``), so a copied store
resolves in its new place; :meth:`LineageStore.resolve_uri` turns one into a local path. URIs
outside the store (``builtin:digits``, an image folder elsewhere) and records written before
this (absolute paths, ``file://``) are kept and read as they are.
"""
from __future__ import annotations

import contextlib
import os
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote, urlparse

import sqlalchemy as sa

from cci_core.store.artifact_ids import artifact_id, earlier_record
from cci_core.store.codeversion import code_version
from cci_core.store.lineage_sqlite import LineageDatabaseError, read_only_engine, sqlite_file, writable
from cci_core.store.machine_faults import lineage_fault
from cci_core.store.migrations import ensure_schema

# The schema at the migrations' head (migrations/versions/ makes it; a test compares the two).
metadata = sa.MetaData()
artifacts_table = sa.Table(
    "artifacts", metadata,
    sa.Column("id", sa.String(80), primary_key=True),
    sa.Column("kind", sa.String(40), nullable=False, index=True),
    sa.Column("name", sa.String(255), nullable=False, index=True),
    sa.Column("uri", sa.Text, nullable=False, index=True),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("code_version", sa.String(80), nullable=False),
    sa.Column("producer", sa.JSON, nullable=False),
)
inputs_table = sa.Table(
    "artifact_inputs", metadata,
    sa.Column("artifact_id", sa.String(80), sa.ForeignKey("artifacts.id"), primary_key=True),
    sa.Column("input_id", sa.String(80), sa.ForeignKey("artifacts.id"), primary_key=True, index=True),
    sa.Column("role", sa.String(40), nullable=False),
)


@dataclass
class Artifact:
    """One lineage record (docs/architecture.md, "The lineage record")."""
    id: str
    kind: str
    name: str
    uri: str
    content_hash: str
    size: int | None
    created_at: datetime
    params: dict
    metrics: dict
    code_version: str
    producer: dict
    inputs: list[tuple[str, str]] = field(default_factory=list)  # (input id, role)
    stored_uri: str = ""  # the URI as recorded (store-relative); ``uri`` is it resolved to a local path

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["created_at"] = self.created_at.isoformat()
        d["inputs"] = [{"id": i, "role": r} for i, r in self.inputs]
        return d


class UnknownArtifactError(KeyError):
    def __str__(self) -> str:
        return f"no artifact {self.args[0]!r} in the lineage store (see `cci lineage list`)"


class AmbiguousArtifactError(LookupError):
    """A reference that matches several records; the message lists them."""


_VERSIONED = re.compile(r"^(?P<name>.+)@v(?P<version>\d+)$")
STORE_SCHEME = "store://"


def _sqlite_root(url: str) -> Path | None:
    """The folder of a SQLite database file (the store root when the DB is the store's own)."""
    db = sqlite_file(url)
    return None if db is None else db.resolve().parent


def _local_path(uri: str) -> Path | None:
    """The local path an absolute path or a ``file://`` URI names, else None."""
    if uri.startswith("file://"):
        return Path(unquote(urlparse(uri).path))
    return Path(uri) if uri.startswith("/") else None


def engine_url(url: str) -> sa.URL:
    """The SQLAlchemy URL to connect with: ``postgresql://`` (or ``postgres://``) goes through psycopg 3,
    the driver this package depends on (SQLAlchemy's default would be psycopg2)."""
    u = sa.make_url(url)
    return u.set(drivername="postgresql+psycopg") if u.drivername in ("postgresql", "postgres") else u


_shared: dict[str, sa.Engine] = {}
_shared_lock = threading.Lock()
os.register_at_fork(after_in_child=_shared.clear)  # a forked child opens its own connections


def _open(url: str) -> sa.Engine:
    """An engine on ``url`` whose schema is at the migrations' head.

    A server database gets one engine (one connection pool) per process, checked once: every task
    opens a LineageStore. A SQLite file gets a new engine, checked each time (one query), as the
    file may have been replaced since.
    """
    try:
        if not url.startswith("sqlite"):
            with _shared_lock:
                if url not in _shared:
                    engine = sa.create_engine(engine_url(url), pool_pre_ping=True)
                    ensure_schema(engine)
                    _shared[url] = engine
                return _shared[url]
        db = sqlite_file(url)
        if db is not None and db.is_file() and not writable(db):
            engine = read_only_engine(db)
        else:
            engine = sa.create_engine(url, connect_args={"timeout": 60})

            @sa.event.listens_for(engine, "connect")
            def _wal(dbapi_conn, _):  # concurrent readers while one process writes
                dbapi_conn.execute("PRAGMA journal_mode=WAL")
        ensure_schema(engine)
        return engine
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, sa.exc.DatabaseError, ImportError) as exc:
        damaged = lineage_fault(exc, str(sqlite_file(url) or url)) if url.startswith("sqlite") else None
        if damaged is not None:  # damaged, locked or read-only: say which and what to do
            raise LineageDatabaseError(str(damaged)) from None
        if isinstance(exc, sa.exc.DatabaseError) and not isinstance(exc, sa.exc.OperationalError):
            raise
        shown = url
        with contextlib.suppress(sa.exc.ArgumentError):
            shown = sa.make_url(url).render_as_string(hide_password=True)
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise LineageDatabaseError(f"cannot open the lineage database {shown} ($CCI_LINEAGE_URL, else the "
                                   f"store's lineage.db): {reason}; check the URL (postgresql://USER@HOST:PORT/DB "
                                   "or sqlite:////PATH) and that its server runs") from None


class LineageStore:
    """Record and query artifacts. ``url`` is a SQLAlchemy URL (``postgresql://`` uses psycopg 3).

    root : the store root that URIs are relative to; by default the folder of a SQLite
        database (the store's own ``lineage.db``), so every process that opens the same URL
        resolves URIs the same way. Without one (PostgreSQL), URIs are kept as given.
    """

    def __init__(self, url: str, root: str | Path | None = None):
        self.url = url
        self.root = Path(root).resolve() if root else _sqlite_root(url)
        self.engine = _open(url)

    def portable_uri(self, uri: str) -> str:
        """``store://<path relative to the root>`` for a path (or ``file://`` URI) inside the store, else ``uri``."""
        path = _local_path(uri)
        if self.root is None or path is None:
            return uri
        try:
            rel = path.resolve().relative_to(self.root)
        except ValueError:
            return uri
        return STORE_SCHEME + ("" if rel == Path(".") else rel.as_posix())

    def resolve_uri(self, stored: str) -> str:
        """The local path of a recorded URI: ``store://x`` under this store's root, ``file://`` as a
        path; anything else (``builtin:digits``, an old absolute path) as it is."""
        if stored.startswith(STORE_SCHEME) and self.root is not None:
            rel = stored[len(STORE_SCHEME):]
            return str(self.root / rel) if rel else str(self.root)
        path = _local_path(stored)
        return str(path) if path is not None else stored

    def record(self, kind: str, name: str, uri: str, content_hash: str, *, size: int | None = None,
               params: dict | None = None, metrics: dict | None = None, producer: dict | None = None,
               inputs: list[tuple[str, str]] | None = None, aid: str | None = None) -> Artifact:
        """Insert a record (or return the existing one with the same id).

        ``inputs`` are ``(parent artifact id, role)`` pairs; every parent must exist. ``aid``: the
        id of a folder named by its content (a palette), else :func:`artifact_id` of content and URI."""
        params, metrics, inputs = params or {}, metrics or {}, list(inputs or [])
        stored = self.portable_uri(uri)
        aid = aid or artifact_id(kind, content_hash, params, inputs, stored)
        existing = self.find(aid) or earlier_record(self, kind, content_hash, params, inputs, stored)
        if existing is not None:
            return self._same_as(existing, metrics)
        try:
            with self.engine.begin() as conn:
                for parent, _ in inputs:
                    if conn.execute(sa.select(artifacts_table.c.id)
                                    .where(artifacts_table.c.id == parent)).first() is None:
                        raise UnknownArtifactError(parent)
                row = dict(id=aid, kind=kind, name=name, uri=stored, content_hash=content_hash,
                           size=size, created_at=datetime.now(timezone.utc), params=params, metrics=metrics,
                           code_version=code_version(), producer=producer or {})
                conn.execute(artifacts_table.insert().values(**row))
                if inputs:
                    conn.execute(inputs_table.insert(), [
                        {"artifact_id": aid, "input_id": parent, "role": role} for parent, role in inputs])
        except sa.exc.IntegrityError:
            # another process recorded the same artifact (same id: same content, params and inputs)
            # between our check and our insert: theirs is ours
            existing = self.find(aid)
            if existing is None:
                raise
            return self._same_as(existing, metrics)
        return self.get(aid)

    def _same_as(self, existing: Artifact, metrics: dict) -> Artifact:
        """An artifact recorded again: the existing record, with any new metrics merged in."""
        if metrics and metrics != existing.metrics:
            self.update_metrics(existing.id, metrics)
            existing.metrics = {**existing.metrics, **metrics}
        return existing

    def update_metrics(self, aid: str, metrics: dict) -> None:
        art = self.get(aid)
        with self.engine.begin() as conn:
            conn.execute(artifacts_table.update().where(artifacts_table.c.id == aid)
                         .values(metrics={**art.metrics, **metrics}))

    def find(self, aid: str) -> Artifact | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(artifacts_table).where(artifacts_table.c.id == aid)).mappings().first()
            if row is None:
                return None
            ins = conn.execute(sa.select(inputs_table.c.input_id, inputs_table.c.role)
                               .where(inputs_table.c.artifact_id == aid)
                               .order_by(inputs_table.c.role, inputs_table.c.input_id)).all()
        d = dict(row)
        if d["created_at"].tzinfo is None:  # SQLite drops the zone
            d["created_at"] = d["created_at"].replace(tzinfo=timezone.utc)
        d["stored_uri"], d["uri"] = d["uri"], self.resolve_uri(d["uri"])
        return Artifact(**d, inputs=[(i, r) for i, r in ins])

    def get(self, aid: str) -> Artifact:
        """The record with this id, or a unique id prefix."""
        art = self.find(aid)
        if art is None:
            with self.engine.connect() as conn:
                ids = conn.execute(sa.select(artifacts_table.c.id)
                                   .where(artifacts_table.c.id.startswith(aid, autoescape=True)).limit(6)).scalars().all()
            if len(ids) == 1:
                art = self.find(ids[0])
            elif len(ids) > 1 and aid:
                raise AmbiguousArtifactError(f"id prefix {aid!r} fits {', '.join(ids[:5])}"
                                             + (" and more" if len(ids) > 5 else "") + "; give more of the id")
        if art is None:
            raise UnknownArtifactError(aid)
        return art

    def resolve(self, ref: str) -> Artifact:
        """The one record ``ref`` names.

        Grammar, tried in this order: an artifact id or a unique id prefix; ``KIND:NAME`` (e.g.
        ``corpus:fmnist@v2``, ``dataset:gen@v1``, ``clustering:RUN/clustering``); a plain ``NAME``
        (e.g. ``fmnist@v2``, ``RUN/clustering``). ``NAME@latest`` or a bare corpus/dataset name
        means its highest version. A name matching records of several kinds, or several records of
        one kind, is an :class:`AmbiguousArtifactError` listing the candidates.
        """
        art = self.find(ref)
        if art is not None:
            return art
        kind, sep, name = ref.partition(":")
        if not sep or kind not in self.kinds():
            kind, name = None, ref
        if not name.strip():
            raise UnknownArtifactError(ref)
        matches = self.list(kind=kind, name=name)
        if not matches:
            matches = self._latest_version(kind, name.removesuffix("@latest"))
        if not matches and kind is None:
            return self.get(ref)  # an id prefix, or UnknownArtifactError
        if not matches:
            raise UnknownArtifactError(ref)
        if len(matches) > 1:
            listed = "; ".join(f"{a.kind}:{a.name} = {a.id} ({a.created_at:%Y-%m-%d %H:%M})" for a in matches[:6])
            more = f" and {len(matches) - 6} more" if len(matches) > 6 else ""
            raise AmbiguousArtifactError(f"{ref!r} names {len(matches)} artifacts: {listed}{more}; "
                                         "give one of these ids" + ("" if kind else " or KIND:NAME"))
        return matches[0]

    def _latest_version(self, kind: str | None, name: str) -> list[Artifact]:
        """The records of ``name@vN`` with the highest N (one per kind)."""
        if "@" in name or not name:
            return []
        q = sa.select(artifacts_table.c.kind, artifacts_table.c.name).where(
            artifacts_table.c.name.startswith(f"{name}@v", autoescape=True))
        if kind:
            q = q.where(artifacts_table.c.kind == kind)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        best: dict[str, tuple[int, str]] = {}
        for k, n in rows:
            m = _VERSIONED.match(n)
            if m and m["name"] == name and int(m["version"]) > best.get(k, (-1, ""))[0]:
                best[k] = (int(m["version"]), n)
        return [a for k, (_, n) in sorted(best.items()) for a in self.list(kind=k, name=n)]

    def kinds(self) -> list[str]:
        """The kinds of artifact recorded so far."""
        with self.engine.connect() as conn:
            return sorted(conn.execute(sa.select(artifacts_table.c.kind).distinct()).scalars().all())

    def list(self, kind: str | None = None, name: str | None = None, limit: int = 1000) -> list[Artifact]:
        q = sa.select(artifacts_table.c.id).order_by(artifacts_table.c.created_at.desc()).limit(limit)
        if kind:
            q = q.where(artifacts_table.c.kind == kind)
        if name:
            q = q.where(artifacts_table.c.name == name)
        with self.engine.connect() as conn:
            ids = conn.execute(q).scalars().all()
        return [self.get(i) for i in ids]

    def by_uri(self, uri: str, kind: str | None = None) -> Artifact | None:
        """The newest record whose URI names ``uri`` (a path or URI, compared as this store
        writes them: portable form), optionally of one kind; one query, any store size."""
        forms = {self.portable_uri(str(uri)), str(uri)}
        local = _local_path(str(uri))
        if local is not None:  # records written before URIs were store-relative hold the absolute path
            forms.add(str(local.resolve()))
        q = sa.select(artifacts_table.c.id).where(artifacts_table.c.uri.in_(sorted(forms)))
        if kind:
            q = q.where(artifacts_table.c.kind == kind)
        with self.engine.connect() as conn:
            aid = conn.execute(q.order_by(artifacts_table.c.created_at.desc()).limit(1)).scalar()
        return None if aid is None else self.get(aid)

    def outputs_of(self, aid: str) -> list[tuple[str, str]]:
        """Artifacts made from ``aid``: ``(child id, role of aid in the child)``."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(inputs_table.c.artifact_id, inputs_table.c.role)
                                .where(inputs_table.c.input_id == aid)).all()
        return [(a, r) for a, r in rows]

    def upstream(self, aid: str, depth: int | None = None, once: bool = False) -> dict:
        """The tree of what made ``aid``: ``{"artifact": Artifact, "role": None, "inputs": [...]}``.

        depth : levels below ``aid`` to walk (None: all)
        once : each artifact is expanded the first time it is met; later meetings are leaves
            marked ``"seen": True`` (a shared ancestor is listed once, not under every child)
        """
        return self._walk(self.get(aid).id, "inputs", lambda a: a.inputs, depth, once)

    def downstream(self, aid: str, depth: int | None = None, once: bool = False) -> dict:
        """The tree of what was made from ``aid`` (``"outputs"``); ``depth`` and ``once`` as in :meth:`upstream`."""
        return self._walk(self.get(aid).id, "outputs", lambda a: self.outputs_of(a.id), depth, once)

    def _walk(self, aid: str, key: str, nexts, depth: int | None, once: bool) -> dict:
        expanded: set[str] = set()

        def walk(node_id: str, role: str | None, path: frozenset, level: int) -> dict:
            art = self.get(node_id)
            node = {"artifact": art, "role": role, key: []}
            if art.id in path or (once and art.id in expanded):
                node["seen"] = True
                return node
            expanded.add(art.id)
            if depth is None or level < depth:
                node[key] = [walk(i, r, path | {art.id}, level + 1) for i, r in nexts(art)]
            else:
                node["truncated"] = len(nexts(art))
            return node
        return walk(aid, None, frozenset(), 0)
