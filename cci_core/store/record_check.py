"""Reading the records a store keeps on disk, checked once against their typed shape.

Every JSON record (``run.json``, ``corpus.json``, ``card.json``, ``latest.json``, the JSON
config beside a ``.safetensors`` file) and every Parquet table or weight file a command reads
may have been cut short, edited by hand, restored from a bad backup or hit by bit rot. A
record that cannot be parsed, or whose fields have the wrong type, is a :class:`RecordError`:
one line naming the file (relative to the store where it can), the field, what was found and
what to do. Nothing that cannot be read is ever taken as "absent" or "unfinished" and removed.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cci_core.store import fs

Spec = type | tuple[type, ...]
# folders of a store's root: a path is shown from the last of these it passes through
_STORE_PARTS = ("runs", "corpora", "datasets")
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
               dict: "an object"}
# the field annotations of model config dataclasses (``from __future__ import annotations``: strings)
_SIMPLE = {"int": int, "float": float, "str": str, "bool": bool}


class RecordError(ValueError):
    """A record on disk that is unreadable or of the wrong shape (a ValueError: the CLI prints one line)."""


def shown(path: Any, root: Any = None) -> str:
    """PATH as the user should see it: relative to ROOT (the store) when it is inside it, else from
    the store's ``runs/``, ``corpora/`` or ``datasets/`` folder it lies in, else as given."""
    text = str(path)
    if root is not None and text.startswith(str(root).rstrip("/") + "/"):
        return text[len(str(root).rstrip("/")) + 1:]
    parts = Path(text).parts if not fs.is_url(text) else text.split("/")
    at = [i for i, p in enumerate(parts[:-1]) if p in _STORE_PARTS]
    return "/".join(parts[at[-1]:]) if at else text


def _type_name(spec: Spec) -> str:
    specs = spec if isinstance(spec, tuple) else (spec,)
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in specs)


def _fits(value: Any, spec: Spec) -> bool:
    specs = spec if isinstance(spec, tuple) else (spec,)
    if isinstance(value, bool):  # JSON true/false is not a number
        return bool in specs
    if isinstance(value, int) and float in specs:
        return True
    return isinstance(value, specs)


def _value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_fields(record: Any, path: Any, fix: str, required: Mapping[str, Spec] | None = None,
                 optional: Mapping[str, Spec] | None = None, prefix: str = "", root: Any = None) -> dict:
    """RECORD (parsed from PATH) if it is an object whose REQUIRED fields are present with their
    type and whose OPTIONAL fields are absent, null or of their type; else a :class:`RecordError`.

    Parameters
    ----------
    fix : what the user should do, appended to the message (``restore the file from a backup ...``)
    prefix : the place of RECORD inside the file, for nested objects (``children[0].``)
    """
    where = shown(path, root)
    if not isinstance(record, dict):
        what = f"field '{prefix.rstrip('.')}'" if prefix else "the file"
        raise RecordError(f"{where}: {what} holds {_value(record)}, expected a JSON object; {fix}")
    for name in required or {}:
        if record.get(name) is None:
            raise RecordError(f"{where}: field '{prefix}{name}' is {'null' if name in record else 'missing'}; {fix}")
    for name, spec in {**(optional or {}), **(required or {})}.items():
        value = record.get(name)
        if value is not None and not _fits(value, spec):
            raise RecordError(f"{where}: field '{prefix}{name}' is {_value(value)}, expected {_type_name(spec)}; {fix}")
    return record


def parse_json(path: Any, fix: str, root: Any = None) -> Any:
    """The parsed JSON of PATH; a file that is not JSON (cut short, edited, damaged) is a
    :class:`RecordError` naming it. A missing file stays a FileNotFoundError."""
    data = fs.read_bytes(path)
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
        at = f", line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise RecordError(f"{shown(path, root)} is not valid JSON ({reason}{at}); {fix}") from None


def read_record(path: Any, fix: str, required: Mapping[str, Spec] | None = None,
                optional: Mapping[str, Spec] | None = None, root: Any = None) -> dict:
    """Parse the JSON object at PATH and check its fields (:func:`check_fields`): one read, one check."""
    return check_fields(parse_json(path, fix, root), path, fix, required, optional, root=root)


def read_table(path: Any, fix: str, root: Any = None, **kw):
    """A Parquet file as a DataFrame (``fs.read_parquet``); one that is cut short or damaged is a
    :class:`RecordError` naming it."""
    import pyarrow as pa
    try:
        return fs.read_parquet(path, **kw)
    except pa.ArrowException as exc:
        if isinstance(exc, OSError):  # a missing file, a permission: not damage of the file
            raise
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        first = first.split("': ", 1)[-1] if str(path) in first else first  # pyarrow repeats the full path
        raise RecordError(f"{shown(path, root)} cannot be read as Parquet ({first}); {fix}") from None


def read_tensors(path: Any, fix: str, device: str = "cpu", root: Any = None, loader=None) -> dict:
    """The tensors of a ``.safetensors`` file (``fs.load_tensors``, or ``LOADER(path)``); a damaged
    header or a file cut short is a :class:`RecordError` naming it."""
    from safetensors import SafetensorError
    try:
        return loader(path) if loader is not None else fs.load_tensors(path, device=device)
    except SafetensorError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RecordError(f"{shown(path, root)} cannot be read as safetensors ({first}); {fix}") from None



def build_config(cls: type, record: Any, path: Any, fix: str, prefix: str = "", root: Any = None,
                 ignore_unknown: bool = False):
    """The dataclass CLS built from RECORD (a model config read from PATH, e.g. ``generator.json``'s
    ``model``): a key that is not a field of CLS (unless IGNORE_UNKNOWN), a value not of its field's
    type, or a value its ``__post_init__`` refuses is a :class:`RecordError` naming the file and the field."""
    record = check_fields(record, path, fix, prefix=prefix, root=root)
    fields = {f.name: _SIMPLE.get(str(f.type)) for f in dataclasses.fields(cls)}
    if ignore_unknown:
        record = {k: v for k, v in record.items() if k in fields}
    for name in record:
        if name not in fields:
            raise RecordError(f"{shown(path, root)}: field '{prefix}{name}' is not a setting of {cls.__name__} "
                              f"({', '.join(fields)}); {fix}")
    # every key given must hold its type: a null is no setting (the dataclass's default is left out)
    check_fields(record, path, fix, {k: t for k, t in fields.items() if t is not None and k in record}, prefix=prefix,
                 root=root)
    try:
        return cls(**record)
    except (TypeError, ValueError) as exc:
        raise RecordError(f"{shown(path, root)}: field '{prefix.rstrip('.')}' holds a {cls.__name__} that cannot be "
                          f"built ({exc}); {fix}") from None
