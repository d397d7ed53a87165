"""The run record: ``runs/<run-id>/run.json``, one per run, and its one writer.

A run (a clustering, or a run derived from one: refined, self-conditioned, refresh) keeps
its parameters, the corpus version it read, the results of its steps and its status in
``run.json``. Every change goes through :func:`update_run`, which reads, merges and
atomically replaces the file under an OS lock, so two steps of one run never lose each
other's fields. ``status == "complete"`` is the commit point: a run is visible (listed,
usable by later commands) only after every lineage record of it was written.

Derived runs name their parent (``parent_run``; a refresh run ``refreshed_from``), and a
finished derived run is added to its parent's ``children``: every lookup of "the refined
run of X" follows those links, never a naming pattern (:func:`children`).
"""
from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from cci_core.store import fs, relpaths
from cci_core.store.fs import AnyPath
from cci_core.store.lineage import LineageStore
from cci_core.store.record_check import RecordError, check_fields, read_record
from cci_core.store.store import (
    Store,
    atomic_write_json,
    file_lock,
    process_identity,
    utc_now,
    validate_name,
    writer_alive,
)

RUN_FILE = "run.json"
_LOCK_FILE = ".run.lock"
RUN_FIX = "restore the file from a backup or start a new run with another --run-id"
# run.json's typed shape: what every reader may rely on once read_run returned (paths may be
# absolute or relative to the store; fields not named here are kept unchecked)
RUN_FIELDS = {"run_id": str, "status": str}
RUN_OPTIONAL = {"kind": str, "corpus": str, "corpus_version": int, "corpus_artifact_id": str, "parent_run": str,
                "refreshed_from": str, "children": list, "created_at": str, "finished_at": str, "writer": dict,
                "params": dict, "n_rows": int, "shape": list, "has_labels": bool, "store": str, "run_dir": str,
                "clustering": dict, "partitions": list, "embeddings": dict, "classifier": str,
                "classifier_artifact_id": str, "parent_clustering_artifact_id": str, "training": dict,
                "evaluation": dict, "features": dict}
# what a finished clustering's readers use (finished_run): present, not just typed when present
_FINISHED_FIELDS = {"corpus": str, "corpus_version": int}
_CHILD_FIELDS = {"run_id": str, "kind": str}
_PARTITION_FIELDS = {"cluster": int, "count": int, "path": str}
_WRITER_OPTIONAL = {"pid": int, "host": str, "started": float}
# Kinds of run a parent lists among its children.
DERIVED_KINDS = ("refined", "self-conditioned", "refresh")


@dataclass(frozen=True)
class Child:
    """One run made from another: its id and kind (``refined``, ``self-conditioned``, ``refresh``)."""
    run_id: str
    kind: str


@dataclass(frozen=True)
class RunRecord:
    """The header of a run record: identity, origin, links and status.

    Step results (``embeddings``, ``clustering``, ``partitions``, ``classifier``, ...) stay in
    ``steps``, keyed as in ``run.json``; :meth:`to_json` writes them back at the top level,
    so the file keeps one flat JSON object.
    """
    run_id: str
    status: str
    kind: str | None = None
    corpus: str | None = None
    corpus_version: int | None = None
    parent_run: str | None = None
    refreshed_from: str | None = None
    children: tuple[Child, ...] = ()
    created_at: str | None = None
    finished_at: str | None = None
    steps: Mapping[str, Any] = field(default_factory=dict)

    _HEADER = ("run_id", "status", "kind", "corpus", "corpus_version", "parent_run", "refreshed_from",
               "created_at", "finished_at")

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RunRecord:
        head = {k: d.get(k) for k in cls._HEADER}
        kids = tuple(Child(c["run_id"], c["kind"]) for c in d.get("children", ()))
        steps = {k: v for k, v in d.items() if k not in cls._HEADER and k != "children"}
        return cls(**head, children=kids, steps=steps)

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self._HEADER if getattr(self, k) is not None}
        out.update(self.steps)
        if self.children:
            out["children"] = [{"run_id": c.run_id, "kind": c.kind} for c in self.children]
        return out

    @property
    def parent(self) -> str | None:
        """The run this one was made from, if any."""
        return self.refreshed_from or self.parent_run

    @property
    def complete(self) -> bool:
        return self.status == "complete"


def new_run_id(corpus: str) -> str:
    """``<corpus>-<UTC time>-<4 hex>``: sortable, unique, readable."""
    return f"{corpus}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def lineage_store(store: Store) -> LineageStore:
    """The lineage database of this store."""
    return LineageStore(store.lineage_url)


def run_file(store: Store, run_id: str) -> AnyPath:
    """Where a run's record lives (whether or not it exists yet)."""
    return store.run_dir(validate_name(run_id, "run id")) / RUN_FILE


def checked_run(store: Store, run_id: str) -> dict:
    """The run.json of RUN_ID as on disk, read once and checked against its typed shape
    (:data:`RUN_FIELDS`): JSON that cannot be parsed, a field of the wrong type, or a record of
    another run id is a :class:`~cci_core.store.record_check.RecordError` naming the file and the field."""
    path = run_file(store, run_id)
    run = read_record(path, RUN_FIX, RUN_FIELDS, RUN_OPTIONAL, root=store.root)
    if run["run_id"] != run_id:
        raise RecordError(f"runs/{run_id}/{RUN_FILE}: field 'run_id' is {run['run_id']!r}, expected {run_id!r} "
                          f"(the folder's name); {RUN_FIX}")
    for i, child in enumerate(run.get("children") or ()):
        check_fields(child, path, RUN_FIX, _CHILD_FIELDS, prefix=f"children[{i}].", root=store.root)
    for i, part in enumerate(run.get("partitions") or ()):
        check_fields(part, path, RUN_FIX, _PARTITION_FIELDS, prefix=f"partitions[{i}].", root=store.root)
    if run.get("writer") is not None:
        check_fields(run["writer"], path, RUN_FIX, optional=_WRITER_OPTIONAL, prefix="writer.", root=store.root)
    shape = run.get("shape")
    if shape is not None and (len(shape) != 3 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                                                         for n in shape)):
        raise RecordError(f"runs/{run_id}/{RUN_FILE}: field 'shape' is {shape!r}, expected [height, width, channels] "
                          f"as positive integers; {RUN_FIX}")
    return run


def read_run(store: Store, run_id: str) -> dict:
    """The run.json of a run (checked: :func:`checked_run`); a clear LookupError when there is no such run."""
    path = run_file(store, run_id)
    if not path.exists():
        runs = list_runs(store)
        hint = f"; runs in this store: {', '.join(runs[-5:])}" if runs else "; run `cci cluster CORPUS` first"
        raise LookupError(f"no run {run_id!r} in {store.root}{hint}")
    return resolved(store, run_id, checked_run(store, run_id))


def resolved(store: Store, run_id: str, record: dict) -> dict:
    """A run.json as read from disk, its store-relative paths (and an older record's absolute
    ones, under the root it was written in) as paths under this store (:mod:`cci_core.store.relpaths`):
    a copied store reads its own files, never the original's."""
    return relpaths.from_record(store.root, record, relpaths.old_root(record, f"runs/{run_id}"))


def load(store: Store, run_id: str) -> RunRecord:
    """The typed record of a run (see :func:`read_run` for the errors)."""
    return RunRecord.from_json(read_run(store, run_id))


def finished_run(store: Store, run_id: str) -> dict:
    """run.json of a run whose clustering finished; a clear error otherwise."""
    run = read_run(store, run_id)
    if run.get("status") != "complete" or "clustering" not in run or not run.get("partitions"):
        raise ValueError(f"run {run_id!r} has no finished clustering (status {run.get('status')!r}); "
                         f"finish it with `cci cluster {run.get('corpus', 'CORPUS')}` first")
    check_fields(run, run_file(store, run_id), RUN_FIX, _FINISHED_FIELDS, root=store.root)
    return run


def write_run(store: Store, run_id: str, record: Mapping[str, Any]) -> dict:
    """Create or replace a run's whole record (under the run's lock, atomically)."""
    path = run_file(store, run_id)
    with file_lock(path.parent / _LOCK_FILE):
        atomic_write_json(path, relpaths.to_record(store.root, dict(record)))
    return dict(record)


def update_run(store: Store, run_id: str, **fields) -> dict:
    """Merge ``fields`` into a run's run.json: read, merge and replace under the run's lock,
    so concurrent updates of one run never lose each other's fields."""
    path = run_file(store, run_id)
    with file_lock(path.parent / _LOCK_FILE):
        run = checked_run(store, run_id)  # a record that cannot be read is refused, never overwritten
        old = relpaths.old_root(run, f"runs/{run_id}")
        run.update(fields)
        atomic_write_json(path, relpaths.to_record(store.root, run, old))
    return resolved(store, run_id, run)


def add_child(store: Store, parent_id: str, child_id: str, kind: str) -> dict:
    """Record ``child_id`` (a finished run of ``kind``) among ``parent_id``'s children."""
    if kind not in DERIVED_KINDS:
        raise ValueError(f"child kind {kind!r}: must be one of {', '.join(DERIVED_KINDS)}")
    path = run_file(store, parent_id)
    with file_lock(path.parent / _LOCK_FILE):
        run = checked_run(store, parent_id)
        kids = [c for c in run.get("children") or [] if c["run_id"] != child_id]
        run["children"] = kids + [{"run_id": child_id, "kind": kind}]
        atomic_write_json(path, relpaths.to_record(store.root, run, relpaths.old_root(run, f"runs/{parent_id}")))
    return resolved(store, parent_id, run)


def children(store: Store, run_id: str, kind: str | None = None) -> list[dict]:
    """The finished runs made from ``run_id`` (optionally of one kind), oldest first, as run.json dicts."""
    out = []
    for c in load(store, run_id).children:
        if kind is not None and c.kind != kind:
            continue
        path = run_file(store, c.run_id)
        if path.exists():
            child = resolved(store, c.run_id, checked_run(store, c.run_id))
            if child.get("status") == "complete":
                out.append(child)
    return out


def _unfinished(store: Store, run_id: str) -> dict:
    """run.json of an unfinished run ({} when there is none); a finished run id is refused, and so
    is a run.json that cannot be read: only a readable record proves a run unfinished."""
    path = run_file(store, run_id)
    run = checked_run(store, run_id) if path.exists() else {}
    if run.get("status") == "complete":
        raise ValueError(f"run {run_id!r} already exists and is complete; choose another --run-id")
    return run


def check_new_run_id(store: Store, run_id: str) -> str:
    """A run id that is valid, not taken by a finished run (nothing is ever overwritten) and
    not being written by another live process; a folder this id names that is not proven to be
    an unfinished write of a dead writer (:func:`claim_run_dir` would clear it) is refused too."""
    run = _unfinished(store, run_id)
    writer = run.get("writer")
    if writer and writer.get("pid") != os.getpid() and writer_alive(writer):
        raise ValueError(f"run {run_id!r} is being written by process {writer['pid']} on {writer.get('host')} "
                         f"(since {writer.get('since')}); wait for it to finish or choose another --run-id")
    if run and not writer:  # no writer named: nothing proves it was left by a dead one
        raise ValueError(f"runs/{run_id}/{RUN_FILE} is an unfinished run (status {run['status']!r}) that names "
                         "no writer, so it is left as it is; move the folder away if no command is writing it, "
                         "or choose another --run-id")
    if not run and store.run_dir(run_id).exists():
        _refuse_unknown_folder(store.run_dir(run_id), run_id)
    return run_id


def claim_run_dir(store: Store, run_id: str, params: dict | None = None) -> dict:
    """Make ``runs/<run-id>/`` ready for this writer; returns the run.json to resume ({} if none).

    A finished run or one a live process writes is refused. An unfinished run left by a
    killed writer is resumed when ``params`` is given and equals its parameters; otherwise its
    folder is removed, so the new run starts clean. Only that is ever removed: a run.json that
    cannot be read, one that names no writer, or a folder of files without run.json is refused.
    """
    check_new_run_id(store, run_id)
    rdir = store.run_dir(run_id)
    existing = _unfinished(store, run_id)
    # compared as JSON: a tuple in params is a list in run.json (refine's scale never matched)
    if params is not None and existing and existing.get("params") == json.loads(json.dumps(params)):
        return existing
    if rdir.exists():  # proven by check_new_run_id: empty, or an unfinished run of a dead writer
        fs.rmtree(rdir)
    fs.makedirs(rdir)
    return {}


def _refuse_unknown_folder(rdir: AnyPath, run_id: str) -> None:
    """A run folder without run.json may be cleared only when it is empty (a writer killed between
    creating it and writing its record); one that holds files is some run whose record is lost."""
    held = [p.name for p in rdir.iterdir() if p.name != _LOCK_FILE]
    if held:
        raise ValueError(f"runs/{run_id} holds {len(held)} entries ({', '.join(sorted(held)[:3])}"
                         f"{', ...' if len(held) > 3 else ''}) but no {RUN_FILE}: it is not a run this store can "
                         "resume, so it is left as it is; restore its run.json from a backup, or choose another --run-id")


def list_runs(store: Store) -> list[str]:
    """Ids of the finished runs in the store (unfinished ones are not runs yet), sorted."""
    base = store.root / "runs"
    if not base.exists():
        return []
    done = []
    for p in base.iterdir():
        try:
            if (p / RUN_FILE).exists() and checked_run(store, p.name).get("status") == "complete":
                done.append(p.name)
        except ValueError:
            continue
    return sorted(done)


def start_derived_run(store: Store, parent: dict, run_id: str, kind: str, params: dict, **fields) -> dict:
    """Create a run made from PARENT's clustering (a refined or a self-conditioned run), or
    resume an unfinished one of the same params; one started with other params is removed
    first (see :func:`claim_run_dir`). Returns its run.json."""
    existing = claim_run_dir(store, run_id, params)
    rdir = store.run_dir(run_id)
    plan = {key: parent[key] for key in ("corpus", "corpus_version", "corpus_artifact_id", "n_rows", "shape",
                                         "has_labels")}
    plan.update(run_id=run_id, kind=kind, store=str(store.root), run_dir=str(rdir), parent_run=parent["run_id"],
                parent_clustering_artifact_id=parent["clustering"]["clustering_artifact_id"], params=params,
                status="running", writer=process_identity(), **fields,
                created_at=existing.get("created_at") or utc_now())
    return write_run(store, run_id, plan)


def finish_run(store: Store, run: str | Mapping[str, Any], **fields) -> dict:
    """Mark the run (an id, or its record) complete: run.json is the commit point of a run,
    written after every lineage record of the run (each step records its own before
    returning). A derived run is then linked from its parent's ``children``."""
    run_id = run if isinstance(run, str) else run["run_id"]
    record = RunRecord.from_json(update_run(store, run_id, status="complete", finished_at=utc_now(), **fields))
    link = "refresh" if record.refreshed_from else record.kind
    if record.parent is not None and link in DERIVED_KINDS and run_file(store, record.parent).exists():
        add_child(store, record.parent, run_id, link)
    return record.to_json()
