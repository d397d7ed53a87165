"""``cci store verify``: read everything in a store and say what is damaged and what depends on it.

Checked, straight from the files (no Prefect, no Dask):

- every Zarr array: its metadata opens and every stored chunk decodes, its crc32c matching where
  the array has one (:mod:`cci_core.store.integrity`); a corpus's committed rows have every chunk
  file (a missing one would read back as zeros);
- every Parquet file reads, every JSON record parses, every ``.npy`` / ``.npz`` loads, every
  ``*.safetensors`` weight file's header and tensors load;
- the lineage database: SQLite's ``PRAGMA integrity_check``, and every artifact recorded inside
  the store (``store://...``) exists;
- with ``deep``: every corpus row's and dataset row's ``image_id`` against the sha256 of its
  pixels, which also checks arrays written before checksums existed.

Each damaged thing is reported with the lineage artifacts it belongs to and everything made
from them (downstream), so a damaged corpus chunk names the runs and datasets built on it.
Hidden entries (``.staging-*`` folders of unfinished writes, locks) are not checked.
"""
from __future__ import annotations

import hashlib
import io
import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cci_core.store import fs, integrity
from cci_core.store.fs import AnyPath
from cci_core.store.store import Store

MAX_ROWS_NAMED = 10
STORE_MARKERS = ("lineage.db", "corpora", "runs", "datasets")


@dataclass
class Damage:
    """One damaged thing: ``path`` relative to the store, ``where`` inside it (a chunk key, rows,
    an artifact id; empty for the whole file), ``what`` is wrong, and the lineage artifacts it
    belongs to (``owners``) and that were made from those (``dependents``), as ``kind name (id)``."""
    path: str
    where: str
    what: str
    owners: list[str] = field(default_factory=list)
    dependents: list[str] = field(default_factory=list)

    def line(self) -> str:
        return f"{self.path}{' ' + self.where if self.where else ''}: {self.what}"


@dataclass
class VerifyReport:
    """What :func:`verify_store` checked and found."""
    root: str
    deep: bool = False
    arrays: int = 0
    files: int = 0
    rows: int = 0
    without_checksum: list[str] = field(default_factory=list)
    damage: list[Damage] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damage

    def summary(self) -> str:
        deep = f", {self.rows} rows' image_id checked against their pixels" if self.deep else ""
        return f"{self.arrays} arrays, {self.files} files checked{deep}"

    def to_json(self) -> dict:
        return {"store": self.root, "ok": self.ok, "deep": self.deep, "arrays": self.arrays, "files": self.files,
                "rows": self.rows, "without_checksum": self.without_checksum,
                "damaged": [d.__dict__ for d in self.damage]}


def _rel(root: AnyPath, path: AnyPath) -> str:
    return str(path)[len(str(root)):].lstrip("/")


def _walk(path: AnyPath) -> Iterator[tuple[str, AnyPath]]:
    """``("array", dir)`` for each Zarr array and ``("file", path)`` for each other file under
    ``path``, hidden entries left out."""
    for entry in sorted(path.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            meta = entry / "zarr.json"
            if meta.exists() and _node_type(meta) == "array":
                yield "array", entry
            else:
                yield from _walk(entry)
        elif entry.name != "zarr.json" and entry.is_file():
            yield "file", entry


def _node_type(meta: AnyPath) -> str | None:
    try:
        return json.loads(fs.read_bytes(meta)).get("node_type")
    except (OSError, ValueError, AttributeError):
        return "array"  # an unreadable zarr.json: checked (and reported) as an array


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _committed_rows(root: AnyPath, rel: str) -> int | None:
    """Committed rows of a corpus's ``images.zarr`` (from ``corpus.json``), else None."""
    parts = rel.split("/")
    if len(parts) != 3 or parts[0] != "corpora" or parts[2] != "images.zarr":
        return None
    try:
        return int(json.loads(fs.read_bytes(root / "corpora" / parts[1] / "corpus.json"))["versions"][-1]["n_rows"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None  # corpus.json itself is checked (and reported) as a JSON record


def check_array(root: AnyPath, path: AnyPath, report: VerifyReport) -> None:
    """Every stored chunk of the array at ``path`` decodes (and matches its crc32c)."""
    import zarr
    rel = _rel(root, path)
    report.arrays += 1
    try:
        arr = zarr.open_array(fs.zarr_url(path), mode="r")
    except Exception as exc:  # any failure to open is damage of zarr.json
        report.damage.append(Damage(f"{rel}/zarr.json", "", f"array metadata unreadable: {_first_line(exc)}"))
        return
    if not integrity.has_checksum(arr):
        report.without_checksum.append(rel)
    try:
        for key, reason in integrity.damaged_chunks(arr):
            report.damage.append(Damage(rel, f"chunk {key}", reason))
    except Exception as exc:  # not the chunks' bytes (a permission, a disk, an object store): still unreadable
        report.damage.append(Damage(rel, "", f"cannot be read: {_first_line(exc)}"))
    for key in integrity.missing_chunks(arr, path, _committed_rows(root, rel) or 0):
        report.damage.append(Damage(rel, f"chunk {key}", "chunk file missing (its committed rows would read as zeros)"))


def _check_parquet(path: AnyPath) -> None:
    import pyarrow.parquet as pq
    pq.read_table(io.BytesIO(fs.read_bytes(path)))


def _check_json(path: AnyPath) -> None:
    json.loads(fs.read_bytes(path))


def _check_safetensors(path: AnyPath) -> None:
    from safetensors.torch import load
    load(fs.read_bytes(path))


def _check_npy(path: AnyPath) -> None:
    data = io.BytesIO(fs.read_bytes(path))
    loaded = np.load(data, allow_pickle=False)
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            for name in loaded.files:
                loaded[name]


FILE_CHECKS: dict[str, tuple[str, Callable[[AnyPath], None]]] = {
    ".parquet": ("Parquet file unreadable", _check_parquet),
    ".json": ("JSON record does not parse", _check_json),
    ".safetensors": ("weight file does not load", _check_safetensors),
    ".npy": ("array file does not load", _check_npy),
    ".npz": ("array file does not load", _check_npy),
}


def check_file(root: AnyPath, path: AnyPath, report: VerifyReport) -> None:
    """A Parquet, JSON, weight or NumPy file reads whole; other files are not counted."""
    kind = FILE_CHECKS.get(Path(path.name).suffix)
    if path.name == "lineage.db" or kind is None:
        return
    report.files += 1
    what, check = kind
    try:
        check(path)
    except Exception as exc:  # every reader's own error class means the same: the file is damaged
        report.damage.append(Damage(_rel(root, path), "", f"{what}: {_first_line(exc)}"))


def _lineage_url(store: Store) -> str | None:
    try:
        return store.lineage_url
    except ValueError:  # a store on an object store without $CCI_LINEAGE_URL: no lineage to check
        return None


def _sqlite_file(store: Store) -> Path | None:
    url = _lineage_url(store) or ""
    if not url.startswith("sqlite:///"):
        return None
    path = Path(url[len("sqlite:///"):])
    return path if path.exists() else None


def check_lineage(store: Store, report: VerifyReport):
    """The lineage database opens and passes ``PRAGMA integrity_check``; every artifact recorded
    inside the store exists. Returns the records (for dependents), or None when they cannot be read."""
    from cci_core.store.lineage import LineageStore
    url, db = _lineage_url(store), _sqlite_file(store)
    if url is None or (url.startswith("sqlite") and db is None):
        return None  # no lineage (yet): nothing recorded, nothing to check (and no empty database made)
    if db is not None:
        report.files += 1
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                problems = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
        except sqlite3.Error as exc:
            problems = [_first_line(exc)]
        if problems != ["ok"]:
            report.damage.append(Damage(_rel(store.root, db), "", f"lineage database damaged: {'; '.join(problems[:3])}"))
            return None
    try:
        arts = LineageStore(url).list(limit=10**9)
    except Exception as exc:  # a database that opens but cannot be queried is damaged too
        report.damage.append(Damage("lineage.db", "", f"lineage records unreadable: {_first_line(exc)}"))
        return None
    for a in arts:
        rel = in_store(store.root, a)
        if rel and not (store.root / rel).exists():
            report.damage.append(Damage(rel, f"(lineage artifact {a.id})",
                                        f"recorded {a.kind} {a.name} is missing from the store"))
    return arts


def _row_damage(rel: str, arr, ids: dict[int, str], report: VerifyReport) -> None:
    """Rows whose pixels' sha256 differs from their recorded ``image_id``, one damage per chunk."""
    import zarr
    step = arr.chunks[0]
    for start in range(0, max(ids, default=-1) + 1, step):
        rows = [r for r in range(start, start + step) if r in ids]
        if not rows:
            continue
        try:
            block = zarr.Array.get_block_selection(arr, (start // step, *(0,) * (arr.ndim - 1)))
        except Exception:  # a chunk that does not decode is already reported by check_array
            continue
        report.rows += len(rows)
        bad = [r for r in rows if hashlib.sha256(np.ascontiguousarray(block[r - start]).data).hexdigest() != ids[r]]
        if bad:
            shown = ", ".join(map(str, bad[:MAX_ROWS_NAMED])) + (f" and {len(bad) - MAX_ROWS_NAMED} more"
                                                                 if len(bad) > MAX_ROWS_NAMED else "")
            key = integrity.chunk_key(arr, (start // step, *(0,) * (arr.ndim - 1)))
            report.damage.append(Damage(rel, f"chunk {key} rows {shown}",
                                        f"pixels differ from their image_id ({len(bad)} of {len(rows)} rows)"))


def check_pixels(store: Store, report: VerifyReport) -> None:
    """``--deep``: each committed corpus row and each dataset row against its recorded image_id."""
    import zarr
    targets = []  # (images.zarr, parquet, row column, rows limit)
    for cdir in sorted((store.root / "corpora").glob("*")) if (store.root / "corpora").exists() else []:
        rows = _committed_rows(store.root, f"corpora/{cdir.name}/images.zarr")
        if rows is not None:
            targets.append((cdir / "images.zarr", cdir / "index.parquet", "row", rows))
    for vdir in sorted((store.root / "datasets").glob("*/v*")) if (store.root / "datasets").exists() else []:
        if (vdir / "_COMMITTED").exists():
            targets.append((vdir / "images.zarr", vdir / "manifest.parquet", "index", None))
    for images, table, col, limit in targets:
        try:
            arr = zarr.open_array(fs.zarr_url(images), mode="r")
            df = fs.read_parquet(table, columns=[col, "image_id"])
        except Exception:  # an unreadable array or table is already reported by the walk
            continue
        if limit is not None:
            df = df[df[col] < limit]
        _row_damage(_rel(store.root, images), arr, dict(zip(df[col].astype(int), df["image_id"].astype(str))), report)


def in_store(root: AnyPath, art) -> str | None:
    """The path of a lineage artifact relative to the store ``root`` (``store://x``, or a path or URL
    under the root as older records and stores on an object store hold it), else None."""
    from cci_core.store.lineage import STORE_SCHEME
    if art.stored_uri.startswith(STORE_SCHEME):
        return art.stored_uri[len(STORE_SCHEME):].strip("/") or None
    base = str(root).rstrip("/") + "/"
    for uri in (art.stored_uri, art.uri):
        if uri.startswith(base):
            return uri[len(base):].strip("/") or None
    return None


def attach_dependents(damage: list[Damage], arts, root: AnyPath) -> None:
    """Each damage's owning artifacts (the records whose store URI is the damaged path or a
    folder holding it, the most specific ones) and everything downstream of them."""
    by_id = {a.id: a for a in arts}
    children: dict[str, list[str]] = {}
    for a in arts:
        for parent, _role in a.inputs:
            children.setdefault(parent, []).append(a.id)
    inside = [(rel, a) for a in arts if (rel := in_store(root, a))]

    def show(a) -> str:
        return f"{a.kind} {a.name} ({a.id})"
    for d in damage:
        if d.where.startswith("(lineage artifact "):
            owners = [by_id[d.where[len("(lineage artifact "):-1]]]
        else:
            matches = [(u, a) for u, a in inside if u and (d.path == u or d.path.startswith(u + "/"))]
            longest = max((len(u) for u, _ in matches), default=0)
            owners = [a for u, a in matches if len(u) == longest]
        seen, todo = {a.id for a in owners}, [c for a in owners for c in children.get(a.id, [])]
        below = []
        while todo:
            aid = todo.pop(0)
            if aid not in seen and aid in by_id:
                seen.add(aid)
                below.append(by_id[aid])
                todo.extend(children.get(aid, []))
        below.sort(key=lambda a: a.created_at)  # in the order they were made: pca, embeddings, ..., datasets
        d.owners, d.dependents = [show(a) for a in owners], [show(a) for a in below]


def verify_store(store: Store, deep: bool = False, log: Callable[[str], None] | None = None) -> VerifyReport:
    """Check everything in ``store`` (see the module docstring); nothing is written."""
    report = VerifyReport(str(store.root), deep=deep)
    if not store.root.is_dir():
        raise FileNotFoundError(f"no store at {store.root}: give --store the folder `cci ingest` wrote (or set $CCI_STORE)")
    if not any((store.root / m).exists() for m in STORE_MARKERS):
        raise FileNotFoundError(f"{store.root} is not a CCI store (no {', '.join(STORE_MARKERS)} in it): give --store "
                                "the folder `cci ingest` wrote")
    for kind, path in _walk(store.root):
        if log is not None and kind == "array":
            log(f"checking {_rel(store.root, path)}")
        (check_array if kind == "array" else check_file)(store.root, path, report)
    arts = check_lineage(store, report)
    if deep:
        check_pixels(store, report)
    if arts:
        attach_dependents(report.damage, arts, store.root)
    return report
