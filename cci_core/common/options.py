"""Settings dataclasses from ``NAME=VALUE`` options, as typed on a command line (``--refine-set``,
``--eval-set``): each value converted to its field's type, unknown names refused with the known ones."""
from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def _convert(name: str, value: Any, default: Any, what: str, annotation: str = "") -> Any:
    if not isinstance(value, str) or isinstance(default, str):
        return value
    if default is None and value.lower() != "none" and str(annotation).startswith("int"):
        default = 0  # an optional int (``int | None``): typed as an int
    try:
        if isinstance(default, bool):
            return value.lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise ValueError(f"{what} option {name}={value!r}: expected a {type(default).__name__}") from None
    return None if value.lower() == "none" else value


def typed_options(cls: type[T], options: dict | None, what: str) -> dict[str, Any]:
    """``options`` ({name: value}, values possibly strings) converted to the types of ``cls``'s fields.

    Raises ValueError naming an unknown option and the known ones, or a value of the wrong type.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for name, value in (options or {}).items():
        if name not in fields:
            raise ValueError(f"unknown {what} option {name!r}; known: {', '.join(sorted(fields))}")
        out[name] = _convert(name, value, fields[name].default, what, fields[name].type)
    return out


def from_options(cls: type[T], options: dict | None, what: str) -> T:
    """An instance of the dataclass ``cls`` from ``options`` (see :func:`typed_options`)."""
    return cls(**typed_options(cls, options, what))
