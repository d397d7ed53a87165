"""Lineage on PostgreSQL, and the one migration path (Alembic) that SQLite and PostgreSQL share.

- A real PostgreSQL server (Debian's ``postgresql``: initdb + postgres in a temporary folder, on
  127.0.0.1 only, as an unprivileged user) for the module; without it the PostgreSQL tests skip,
  or fail when ``CCI_REQUIRE_SYSTEM_DEPS=1`` (``make test``: scripts/system-deps.sh installs it).
- ``cci ingest`` then two ``cci cluster`` runs at once on a Dask scheduler with two worker
  processes, all with ``$CCI_LINEAGE_URL`` at the server: the records are in PostgreSQL (kinds,
  parent links, the PCA both runs fitted recorded once, ``cci lineage show``), none in SQLite.
- Four processes opening a fresh database at once and recording many artifacts, some the same
  in all four: all succeed, nothing is duplicated (PostgreSQL and SQLite).
- Migrations: a database at the first revision is upgraded by opening it; one made before
  migrations (no version table) is stamped and keeps its rows; the head schema is the table
  definitions in lineage.py; a revision newer than the code is a clear error.
"""
from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import _free_port

from cci_core.store import migrations
from cci_core.store.lineage import LineageStore, engine_url, metadata

CCI = str(Path(sys.executable).parent / "cci")

# The lineage schema as LineageStore made it before migrations (sqlite_master of a lineage.db made at 4324e81).
PRE_MIGRATION_SQLITE = [
    "CREATE TABLE artifacts (\n\tid VARCHAR(80) NOT NULL, \n\tkind VARCHAR(40) NOT NULL, \n\tname VARCHAR(255) NOT NULL, "
    "\n\turi TEXT NOT NULL, \n\tcontent_hash VARCHAR(64) NOT NULL, \n\tsize BIGINT, \n\tcreated_at DATETIME NOT NULL, "
    "\n\tparams JSON NOT NULL, \n\tmetrics JSON NOT NULL, \n\tcode_version VARCHAR(80) NOT NULL, "
    "\n\tproducer JSON NOT NULL, \n\tPRIMARY KEY (id)\n)",
    "CREATE INDEX ix_artifacts_kind ON artifacts (kind)",
    "CREATE INDEX ix_artifacts_name ON artifacts (name)",
    "CREATE TABLE artifact_inputs (\n\tartifact_id VARCHAR(80) NOT NULL, \n\tinput_id VARCHAR(80) NOT NULL, "
    "\n\trole VARCHAR(40) NOT NULL, \n\tPRIMARY KEY (artifact_id, input_id), "
    "\n\tFOREIGN KEY(artifact_id) REFERENCES artifacts (id), \n\tFOREIGN KEY(input_id) REFERENCES artifacts (id)\n)",
]


class PostgresServer:
    """A PostgreSQL server in a temporary folder: 127.0.0.1 only, its sockets in the folder."""

    def __init__(self, bindir: Path):
        self.bindir, self.port = bindir, _free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="cci-pg-"))  # not under pytest's 0700 tmp: the server's user reads it
        self.log = self.folder / "server.log"
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the Debian package's user
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:  # installed some other way
                user = pwd.getpwnam("nobody")
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self.as_user = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]

    def start(self) -> None:
        data = self.folder / "data"
        subprocess.run([*self.as_user, self.bindir / "initdb", "-D", data, "-U", "cci", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, cwd=self.folder)
        with open(self.log, "wb") as log:  # setpriv execs postgres itself: the Popen is the server
            self.proc = subprocess.Popen(
                [*self.as_user, self.bindir / "postgres", "-D", data, "-h", "127.0.0.1", "-p", str(self.port),
                 "-k", self.folder, "-c", "fsync=off", "-c", "log_connections=on"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.folder)
        import psycopg
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start:\n{self.log.read_text()[-3000:]}") from None
                time.sleep(0.2)

    def url(self, database: str) -> str:
        return f"postgresql://cci@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; its ``postgresql://`` URL."""
        import psycopg
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if getattr(self, "proc", None) is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown: SIGTERM would wait for pooled clients
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres():
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        why = "Debian postgresql is not installed: run `bash scripts/system-deps.sh` (make test does)"
        if os.environ.get("CCI_REQUIRE_SYSTEM_DEPS") == "1":
            pytest.fail(why)
        pytest.skip(why)
    server = PostgresServer(found[-1].parent)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """The URL of a new, empty lineage database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'lineage.db'}"
    return request.getfixturevalue("postgres").create_database(f"t{os.getpid()}_{time.monotonic_ns()}")


def _revision(url: str) -> str | None:
    with sa.create_engine(engine_url(url), poolclass=sa.pool.NullPool).connect() as conn:
        return migrations.current_revision(conn)


# --- the pipeline on PostgreSQL ---------------------------------------------------------------------------------

@pytest.fixture
def lineage_cluster(postgres, prefect_api):
    """A Dask scheduler and two worker processes whose environment names the PostgreSQL lineage
    database (each worker connects under its own application name, which the server log shows)."""
    url = postgres.create_database("pipeline")
    env = {**os.environ, "CCI_LINEAGE_URL": url, "PREFECT_API_URL": prefect_api, "COLUMNS": "200"}
    port = _free_port()
    addr, bindir = f"tcp://127.0.0.1:{port}", Path(sys.executable).parent
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [subprocess.Popen([bindir / "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", "127.0.0.1:0"], env=env, **quiet)]
    procs += [subprocess.Popen([bindir / "dask", "worker", addr, "--nthreads", "1", "--host", "127.0.0.1",
                                "--dashboard-address", "127.0.0.1:0"], env={**env, "PGAPPNAME": f"cci-worker-{i}"},
                               **quiet) for i in range(2)]
    from distributed import Client
    try:
        with Client(addr, set_as_default=False, timeout=60) as client:
            client.wait_for_workers(2, timeout=90)
        yield addr, {**env, "PGAPPNAME": "cci-cli"}
    finally:
        with contextlib.suppress(Exception), Client(addr, set_as_default=False, timeout=10) as client:
            client.shutdown()  # the scheduler closes its workers: faster than a SIGTERM to each nanny
        for p in procs[::-1]:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait(timeout=30)


def _cci(env: dict, *args) -> subprocess.Popen:
    return subprocess.Popen([CCI, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _done(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"{' '.join(proc.args[1:3])} failed:\n{err[-3000:]}"
    return out


def test_the_pipeline_records_its_lineage_in_postgres(lineage_cluster, postgres, tmp_path):
    addr, env = lineage_cluster
    store = tmp_path / "store"
    where = ["--store", store, "--dask-address", addr]
    ingest = json.loads(_done(_cci(env, "ingest", "builtin:digits", "--corpus", "d28", "--size", "28x28", "--json",
                                   *where)))
    # two runs at once fit the same PCA: each records its own (same content hash, its own folder and id)
    runs = [_cci(env, "cluster", "d28", "--k", k, "--components", 10, "--run-id", f"k{k}", "--json", *where)
            for k in (3, 4)]
    summaries = [json.loads(_done(p)) for p in runs]
    assert [s["n_clusters"] for s in summaries] == [3, 4]

    lin = LineageStore(env["CCI_LINEAGE_URL"])
    assert lin.root is None and {"source", "corpus", "pca", "embeddings", "clustering", "partition"} <= set(lin.kinds())
    corpus = lin.get(ingest["artifact_id"])
    assert corpus.kind == "corpus" and [r for _, r in corpus.inputs] == ["source"]
    assert lin.get(corpus.inputs[0][0]).uri == "builtin:digits"
    pcas, embs = lin.list(kind="pca"), lin.list(kind="embeddings")
    assert len(pcas) == len(embs) == 2 and len({a.content_hash for a in pcas}) == 1  # fitted by both runs
    for k in (3, 4):
        (pca,) = [a for a in pcas if f"/runs/k{k}/" in a.uri]
        (emb,) = [a for a in embs if f"/runs/k{k}/" in a.uri]
        assert pca.inputs == [(corpus.id, "corpus")] and (pca.id, "pca") in emb.inputs
        clustering = lin.resolve(f"clustering:k{k}/clustering")
        assert {(emb.id, "features"), (pca.id, "pca"), (corpus.id, "corpus")} == set(clustering.inputs)
        assert clustering.producer.get("task_run_id") and clustering.uri == str(store.resolve() / "runs" / f"k{k}" / "clustering")
        parts = [a for a, _ in lin.outputs_of(clustering.id)]
        assert len(parts) == k and {lin.get(a).kind for a in parts} == {"partition"}
    assert not [p for p in store.rglob("*") if p.suffix in (".db", ".db-wal") or p.name.startswith("lineage")]
    log = postgres.log.read_text()
    assert re.search(r"database=pipeline application_name=cci-worker-[01]", log), log[-2000:]  # a worker recorded

    show = subprocess.run([CCI, "lineage", "show", "clustering:k4/clustering", "--store", store],
                          capture_output=True, text=True, env=env, timeout=120)
    assert show.returncode == 0, show.stderr
    tree = show.stdout.split("\n  kind:")[0]
    assert {pca.id, emb.id, corpus.id, corpus.inputs[0][0]} <= set(re.findall(r"\b[a-z_]+-[0-9a-f]{16}\b", tree))
    assert "kind: clustering" in show.stdout and "builtin:digits" in tree


# --- many writers at once --------------------------------------------------------------------------------------

WRITER = """
import json, os, sys, time
url, me, n, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
from cci_core.store.lineage import LineageStore
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.01)
lin = LineageStore(url)  # all four open the new database at once: each may find it without a schema
src = lin.record("source", "src", "builtin:shared", "h-src")
ids = {"src": src.id, "shared": [], "own": []}
for j in range(n):
    shared = lin.record("corpus", f"c{j}", f"/data/c{j}", f"h-c{j}", inputs=[(src.id, "source")], metrics={"by": me})
    own = lin.record("pca", f"p{me}-{j}", f"/data/p{me}-{j}", f"h-p{me}-{j}", inputs=[(shared.id, "corpus")])
    ids["shared"].append(shared.id)
    ids["own"].append(own.id)
print(json.dumps(ids))
"""


def test_four_processes_recording_at_once_all_succeed_without_duplicates(database, tmp_path):
    n, go = 40, tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, database, str(i), str(n), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()[-2000:]
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(out) for out, _ in outs]
    assert len({r["src"] for r in results}) == 1 and all(r["shared"] == results[0]["shared"] for r in results)
    own = [a for r in results for a in r["own"]]
    assert len(set(own)) == 4 * n
    engine = sa.create_engine(engine_url(database), poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*), count(DISTINCT id) FROM artifacts")).one() == (1 + 5 * n, 1 + 5 * n)
        assert conn.execute(sa.text("SELECT count(*) FROM artifact_inputs")).scalar() == 5 * n
        assert conn.execute(sa.text(f"SELECT version_num FROM {migrations.VERSION_TABLE}")).scalars().all() == [
            migrations.HEAD]
    engine.dispose()


# --- migrations --------------------------------------------------------------------------------------------------

def _indexes(url: str) -> set[str]:
    engine = sa.create_engine(engine_url(url), poolclass=sa.pool.NullPool)
    insp = sa.inspect(engine)
    return {i["name"] for table in ("artifacts", "artifact_inputs") for i in insp.get_indexes(table)}


def _upgrade_to(url: str, revision: str) -> None:
    from alembic import command
    with sa.create_engine(engine_url(url), poolclass=sa.pool.NullPool).begin() as conn:
        command.upgrade(migrations.alembic_config(conn), revision)


def _insert_old_rows(url: str) -> None:
    with sa.create_engine(engine_url(url), poolclass=sa.pool.NullPool).begin() as conn:
        for aid, kind, parent in (("corpus-old", "corpus", None), ("pca-old", "pca", "corpus-old")):
            conn.execute(sa.text(
                "INSERT INTO artifacts (id, kind, name, uri, content_hash, size, created_at, params, metrics, "
                "code_version, producer) VALUES (:id, :kind, :name, :uri, 'h', 1, :t, '{}', '{\"m\": 1}', '0.1.0', '{}')"),
                {"id": aid, "kind": kind, "name": aid, "uri": f"/old/{aid}", "t": "2025-01-02 03:04:05"})
            if parent:
                conn.execute(sa.text("INSERT INTO artifact_inputs VALUES (:a, :p, 'corpus')"), {"a": aid, "p": parent})


def _check_old_rows_kept(lin: LineageStore) -> None:
    pca = lin.get("pca-old")
    assert pca.inputs == [("corpus-old", "corpus")] and pca.metrics == {"m": 1} and pca.uri == "/old/pca-old"
    assert lin.outputs_of("corpus-old") == [("pca-old", "corpus")]
    new = lin.record("pca", "new", "/new", "h2", inputs=[("corpus-old", "corpus")])
    assert {a for a, _ in lin.outputs_of("corpus-old")} == {"pca-old", new.id}


def test_a_database_at_the_first_revision_is_upgraded_by_opening_it(database):
    _upgrade_to(database, migrations.FIRST)
    _insert_old_rows(database)
    assert _revision(database) == migrations.FIRST and "ix_artifact_inputs_input_id" not in _indexes(database)
    lin = LineageStore(database)
    assert _revision(database) == migrations.HEAD
    assert {"ix_artifact_inputs_input_id", "ix_artifacts_uri", "ix_artifacts_kind"} <= _indexes(database)
    _check_old_rows_kept(lin)


def test_a_database_made_before_migrations_is_stamped_and_keeps_its_rows(database):
    if database.startswith("sqlite"):  # the very tables of then
        with sqlite3.connect(database.removeprefix("sqlite:///")) as conn:
            for statement in PRE_MIGRATION_SQLITE:
                conn.execute(statement)
    else:  # the first revision, which makes the same tables (checked on SQLite below), without its stamp
        _upgrade_to(database, migrations.FIRST)
        with sa.create_engine(engine_url(database), poolclass=sa.pool.NullPool).begin() as conn:
            conn.execute(sa.text(f"DROP TABLE {migrations.VERSION_TABLE}"))
    _insert_old_rows(database)
    assert _revision(database) is None
    lin = LineageStore(database)
    assert _revision(database) == migrations.HEAD and "ix_artifacts_uri" in _indexes(database)
    _check_old_rows_kept(lin)


def test_the_first_revision_makes_the_tables_of_before_and_head_is_the_table_definitions(tmp_path, database):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    assert ScriptDirectory.from_config(migrations.alembic_config()).get_current_head() == migrations.HEAD
    first = tmp_path / "first.db"
    _upgrade_to(f"sqlite:///{first}", migrations.FIRST)
    with sqlite3.connect(first) as conn:
        made = [sql for (sql,) in conn.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND "
                                                f"name != '{migrations.VERSION_TABLE}' ORDER BY rowid")]
    assert made == PRE_MIGRATION_SQLITE
    LineageStore(database)
    with sa.create_engine(engine_url(database), poolclass=sa.pool.NullPool).connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": migrations.VERSION_TABLE})
        assert compare_metadata(ctx, metadata) == []


def test_a_revision_newer_than_the_code_is_a_clear_error(tmp_path):
    url = f"sqlite:///{tmp_path / 'lineage.db'}"
    LineageStore(url)
    with sqlite3.connect(tmp_path / "lineage.db") as conn:
        conn.execute(f"UPDATE {migrations.VERSION_TABLE} SET version_num = '9999'")
    with pytest.raises(migrations.SchemaError, match=r"revision '9999'.*upgrade cci"):
        LineageStore(url)


def test_an_unreachable_lineage_database_is_one_error_line(tmp_path):
    (tmp_path / "corpora").mkdir()  # a store, whose lineage is elsewhere
    url = f"postgresql://cci:secret@127.0.0.1:{_free_port()}/nowhere"  # nothing listens there
    res = subprocess.run([CCI, "lineage", "list", "--store", tmp_path], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CCI_LINEAGE_URL": url})
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert "cannot open the lineage database" in res.stderr and ":***@127.0.0.1" in res.stderr
    assert "secret" not in res.stderr and "refused" in res.stderr and not list(tmp_path.rglob("*.db"))


def test_postgresql_urls_use_psycopg_3():
    assert engine_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert engine_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert engine_url("postgresql+psycopg2://u@h/db").drivername == "postgresql+psycopg2"  # an explicit driver stays
    assert engine_url("sqlite:///x.db").drivername == "sqlite"

