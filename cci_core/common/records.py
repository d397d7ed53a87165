"""The base of the typed records stages hand each other: given typed or as its JSON dict, one record."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

R = TypeVar("R", bound="JsonRecord")


class JsonRecord:
    """Mixin for a frozen dataclass with ``from_json``: :meth:`of` accepts the record or its JSON dict
    (a step called by a task gets the dict, a step called by the library gets the record)."""

    @classmethod
    def of(cls: type[R], value: R | Mapping[str, Any]) -> R:
        return value if isinstance(value, cls) else cls.from_json(value)
