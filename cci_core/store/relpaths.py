"""Paths in the store's own records, kept relative to the store (issue 28: a store that moves).

A record inside the store (``run.json``, ``models/*/model.json``, ``training.json``, reports)
names files of the same store as paths relative to its root (``runs/km/classifier``), so a copied
or moved store reads its own files and never the old place. In memory, the code keeps working
with full paths (a task reopens the store from its plan's ``store``): :func:`to_record` makes a
record portable just before it is written, :func:`from_record` resolves one against the store it
is read from.

Records written before this hold absolute paths of the place they were written in (and run
records its ``store``). :func:`old_root` finds that place (the record's absolute ``store``, else
the prefix of an absolute path that holds the record's own folder, e.g. ``.../runs/km``); paths
under it are read under the current root. Paths outside the store (an ingest source folder, an
image file) are kept as they are.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from cci_core.store import fs
from cci_core.store.fs import AnyPath
from cci_core.store.record_check import parse_json

# The folders at the top of a store: a relative path starting with one of them names a store file.
TOP_FOLDERS = ("runs", "corpora", "datasets", "palettes", "segments")
STORE_KEY = "store"


def _root(root: AnyPath | str) -> str:
    return str(root).rstrip("/")


def _is_absolute(value: str) -> bool:
    return value.startswith("/") or "://" in value


def relative(root: AnyPath | str, path: AnyPath | str) -> str | None:
    """``path`` relative to ``root`` as a posix string (``"."`` for the root itself), or None when it
    lies outside."""
    r, s = _root(root), str(path)
    if s.rstrip("/") == r:
        return "."
    return s[len(r) + 1:] if s.startswith(r + "/") else None


def is_store_path(value: str) -> bool:
    """Whether a string of a record is a store-relative path (``runs/...``, ``corpora/...``, ...)."""
    return (not _is_absolute(value) and "/" in value and value.split("/", 1)[0] in TOP_FOLDERS)


def resolve(root: AnyPath | str, rel: str) -> AnyPath:
    """The path under ``root`` that a store-relative path names; one leading outside the store is refused."""
    root = fs.as_path(root) if isinstance(root, str) else root
    if rel in (".", ""):
        return root
    if _is_absolute(rel) or ".." in PurePosixPath(rel).parts:
        raise ValueError(f"path {rel!r} in a record of the store {root} leads outside the store; "
                         "a store's records name only files inside it: restore the record from a backup")
    return root / rel


def old_root(record: Any, anchor: str | None = None) -> str | None:
    """The root an older record was written in, when it holds absolute paths: its ``store`` field,
    else the part before ``/<anchor>`` (the record's own folder relative to the store, e.g.
    ``runs/km``) in one of its absolute paths; None when it holds none."""
    if isinstance(record, Mapping):
        stored = record.get(STORE_KEY)
        if isinstance(stored, str) and _is_absolute(stored):
            return stored.rstrip("/")
    if not anchor:
        return None
    mark = "/" + anchor.strip("/")
    for value in _strings(record):
        if _is_absolute(value):
            at = (value + "/").find(mark + "/")
            if at > 0:
                return value[:at]
    return None


def _strings(obj: Any):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)


def _map(obj: Any, fn, key: str | None = None) -> Any:
    if isinstance(obj, Mapping):
        return {k: _map(v, fn, k) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_map(v, fn, key) for v in obj]
    return fn(obj, key) if isinstance(obj, str) else obj


def to_record(root: AnyPath | str, obj: Any, old: str | None = None) -> Any:
    """``obj`` as written into the store: every path under ``root`` (or under ``old``, the root of
    an older record) made store-relative; other values as they are."""
    def portable(value: str, _key):
        for base in (root, old):
            rel = relative(base, value) if base else None
            if rel is not None:
                return rel
        return value
    return _map(obj, portable)


def from_record(root: AnyPath | str, obj: Any, old: str | None = None) -> Any:
    """``obj`` as read from the store at ``root``: store-relative paths (and absolute ones under
    ``old``, the root an older record was written in) as full paths under ``root``."""
    def local(value: str, key):
        if key == STORE_KEY and value == ".":
            return str(resolve(root, "."))
        rel = relative(old, value) if old else None
        if rel is not None:
            return str(resolve(root, rel))
        return str(resolve(root, value)) if is_store_path(value) else value
    return _map(obj, local)


def anchor_of(root: AnyPath | str, path: AnyPath | str) -> str | None:
    """The first two parts of ``path`` relative to ``root`` (``runs/km`` for ``runs/km/models/training.json``)."""
    rel = relative(root, path)
    return "/".join(rel.split("/")[:2]) if rel and rel != "." else None


def read_record(root: AnyPath | str, path: AnyPath | str) -> Any:
    """A JSON record of the store at ``root``, its paths resolved under ``root`` (:func:`from_record`)."""
    raw = parse_json(path, "restore it from a backup, or run the command that wrote it again", root)
    return from_record(root, raw, old_root(raw, anchor_of(root, path)))


def write_record(root: AnyPath | str, path: AnyPath | str, obj: Any) -> AnyPath:
    """Write a JSON record into the store at ``root`` atomically, its paths store-relative (:func:`to_record`)."""
    from cci_core.store.store import atomic_write_json
    return atomic_write_json(path, to_record(root, obj))
