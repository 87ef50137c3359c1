"""Query results that read like ``sqlite3.Row`` on both backends: by position and by name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, SupportsIndex, overload

__all__ = ["Record"]


class Record(tuple[Any, ...]):
    """A result row: ``row[0]``, ``row["cost_usd"]``, ``tuple(row)`` and ``row.keys()``."""

    _names: dict[str, int]

    def __new__(cls, values: Sequence[Any], names: dict[str, int]) -> Record:
        row = super().__new__(cls, values)
        row._names = names
        return row

    @overload
    def __getitem__(self, key: SupportsIndex) -> Any: ...
    @overload
    def __getitem__(self, key: slice) -> tuple[Any, ...]: ...
    @overload
    def __getitem__(self, key: str) -> Any: ...
    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)
